// ONNX export and import of Shoal models (docs/models.md, "ONNX").
//
// Export writes a built model as an ONNX ModelProto (Debian's libonnx: ONNX's own protobuf
// schema, checked with onnx::checker before it is returned): input "input" float [N, C, H, W]
// (N is the dynamic dimension "batch"), output "logits" float [N, classes] and optionally
// "probabilities" (Softmax over the logits); batch norm in inference form; ONNX node names and
// initializer names are Shoal's node and parameter names. The file's metadata_props carry a
// ModelMeta (the keys are listed at kMetaKeys below and in docs/models.md).
//
// Import turns an ONNX model made of the operators Shoal has (Conv, Gemm, BatchNormalization,
// Relu, Clip, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape as a flatten, Add, Sum,
// Concat, Dropout, Identity, Constant, and a Softmax on the output) into a trainable Model whose
// initial values are the file's weights. Anything else is a ConfigError of one line naming the
// file (and the node and op where there is one), never a crash.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/model.h"

namespace shoal {

// What travels with a trained model beside its weights: the ONNX file's metadata_props.
struct ModelMeta {
  std::string name;                      // the model (zoo name or the model file's name)
  Shape input;                           // per sample: C, H, W (or features)
  std::int64_t classes = 0;
  std::vector<std::string> class_names;  // may be empty (then "0", "1", ... are used by callers)
  // The evaluation transform (data/transform.h): shorter side resized to `resize` (0: `size`),
  // centre crop to H x W, pixel/255, then (x - mean[c]) / stddev[c] when `normalize`.
  std::int64_t resize = 0;
  bool normalize = true;
  std::vector<float> mean, stddev;  // per channel, pixel/255 units
  std::int64_t step = 0;            // the checkpoint's step, 0 if unknown
};

// The metadata_props keys of an export, one per ModelMeta field:
//   shoal.name         text
//   shoal.input        "3x32x32" (per sample)
//   shoal.classes      decimal
//   shoal.class_names  a JSON array of strings ("[]" when none)
//   shoal.resize       decimal (0: the crop size)
//   shoal.normalize    "true" | "false"
//   shoal.mean         comma-separated floats, one per channel (empty when none)
//   shoal.stddev       likewise
//   shoal.step         decimal
extern const char* const kMetaKeys[9];

struct ExportOptions {
  int opset = 11;              // 11..17, else a ConfigError naming the value
  bool probabilities = false;  // also output "probabilities": Softmax of the logits
};

// A built model (parameters and buffers in host memory: the CPU backend's arenas, or copies)
// -> the bytes of an ONNX ModelProto. `values` and `buffers` are the model's arenas in
// declaration order (params().values() and params().buffer_values()).
std::string export_onnx(const Model& model, const float* values, const float* buffers, const ModelMeta& meta,
                        const ExportOptions& options = {});

struct ImportedModel {
  std::unique_ptr<Model> model;        // declared, with the file's initializers as its initial values
  std::vector<float> values, buffers;  // in the model's arena order
  ModelMeta meta;  // from metadata_props when present (Shoal exports), else from the graph (normalize false)
};

// The bytes of an ONNX model -> a trainable Shoal model. `origin` names the file in messages.
ImportedModel import_onnx(const std::string& bytes, const std::string& origin);

// A path ending in ".onnx".
bool is_onnx_path(const std::string& path);

}  // namespace shoal
