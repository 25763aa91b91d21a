// A model: an ordered list of named layers over one ParameterSet, plus the zoo that builds
// them by name (mlp, cnn, cnn_bn, resnet20). Backward reports each layer's parameters as soon
// as their gradients are final, so a strategy can start communicating them while backward goes on.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/layer.h"
#include "models/parameters.h"

namespace shoal {

using GradientsReady = std::function<void(const std::vector<Parameter*>&)>;

class Model {
 public:
  Model(std::string name, Shape sample_shape, std::int64_t classes);

  void add(const std::string& name, std::unique_ptr<Layer> layer);
  // Declares every parameter and buffer: names, shapes and offsets, no memory (the layout the
  // coordinator partitions and records in checkpoints). Once; build() declares if needed.
  void declare();
  // Declares every parameter, allocates the arenas and initialises them from `seed`.
  void build(Backend& backend, std::uint64_t seed);

  const Tensor& forward(LayerContext& ctx, const Tensor& x);
  void backward(LayerContext& ctx, const Tensor& dlogits, const GradientsReady& ready = {});

  const std::string& name() const { return name_; }
  const Shape& sample_shape() const { return sample_shape_; }
  std::int64_t classes() const { return classes_; }
  ParameterSet& params() { return params_; }
  std::string summary() const;  // one line per layer with output shape and parameter count

 private:
  std::string name_;
  Shape sample_shape_;  // C, H, W
  std::int64_t classes_;
  std::vector<std::string> layer_names_;
  std::vector<std::unique_ptr<Layer>> layers_;
  ParameterSet params_;
  bool declared_ = false, built_ = false;
};

// Builds a zoo model for samples of `sample_shape` (C, H, W); throws ConfigError on an
// unknown name or unsupported input size.
std::unique_ptr<Model> build_model(const std::string& name, const Shape& sample_shape, std::int64_t classes);

}  // namespace shoal
