// Model files: a model described in YAML (docs/models.md) — its layers, how they connect, and
// named blocks with arguments that are repeated — built into a Model for an input shape and a
// class count. The zoo (mlp, cnn, cnn_bn, resnet20, resnet18, resnet50, mobilenet_v2) is a set
// of such files compiled into the binary and read through the same path.
//
// Every mistake in a file is a ConfigError of one line naming the file and line: an unknown
// layer kind or option, a missing option, a reference to an undefined layer or block, two
// layers of one name, a cycle, and shapes that do not connect (with both shapes).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/model.h"

namespace shoal {

// What a file says besides its layers.
struct ModelFileInfo {
  std::string name;                // `name:`, else the file's stem
  std::optional<Shape> input;      // `input: 3x224x224`: the default of `shoal model show`
  std::optional<std::int64_t> classes;  // `classes: 1000`: likewise
};

// Builds the model described by `text` (read from `origin`, which error messages name) for
// samples of `sample_shape` (C, H, W) and `classes` classes.
std::unique_ptr<Model> build_model_from_text(const std::string& text, const std::string& origin,
                                             const Shape& sample_shape, std::int64_t classes);
ModelFileInfo read_model_info(const std::string& text, const std::string& origin);

// The zoo: names and the text of each built-in file.
const std::vector<std::string>& zoo_names();
const std::string* zoo_text(const std::string& name);  // null when not in the zoo

// `model` is a zoo name or the path of a model file (anything with a '/' or ending .yaml/.yml,
// or an ONNX file ending .onnx).
bool is_model_path(const std::string& model);
// The text and origin ("zoo:resnet18" or the path) of `model`; throws ConfigError when the
// name is not in the zoo or the file cannot be read.
std::pair<std::string, std::string> model_source(const std::string& model);

// Builds a zoo model or a model file's model for samples of `sample_shape` (C, H, W). A path
// ending .onnx is imported (models/onnx.h) and starts from the file's weights; its input shape
// and class count must be the job's, else a ConfigError naming both.
std::unique_ptr<Model> build_model(const std::string& model, const Shape& sample_shape, std::int64_t classes);

}  // namespace shoal
