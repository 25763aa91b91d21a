// A trained model, loaded for inference: from an ONNX file Shoal exported (or any ONNX model made
// of the operators Shoal has), or from a checkpoint — a ckpt-<step> directory, or a
// checkpoint.dir whose newest complete checkpoint is taken (LATEST, else the newest that
// verifies). A checkpoint gives the model through its `layout` (model, input, classes, class
// names) and `job.ini` (the model file and the evaluation transform), the weights through its
// range files and `buffers`; every file is verified against the MANIFEST first.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/log.h"
#include "models/model.h"
#include "models/onnx.h"

namespace shoal {

struct TrainedModel {
  std::unique_ptr<Model> model;        // declared, not built
  std::vector<float> values, buffers;  // the arenas, in the model's declaration order
  ModelMeta meta;
  std::string source;  // the file or checkpoint directory it came from
};

// Problems are CheckpointError (a checkpoint's files), ConfigError (an ONNX file, a model file
// named by the job) or DataError (the data the normalisation must be measured from), each naming
// the file.
TrainedModel load_trained_model(const std::string& path, const Logger& log);

// The checkpoint directory `path` means: itself when it holds a MANIFEST or is named ckpt-<step>,
// else the one a job would resume from under it; CheckpointError when there is none.
std::string checkpoint_dir_named_by(const std::string& path);

// The name of the checkpoint a checkpoint.dir would be served from now, "" when there is none
// (for following LATEST without verifying every byte on each look).
std::string newest_checkpoint_name(const std::string& root);

}  // namespace shoal
