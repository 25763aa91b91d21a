// Named parameters in flat arenas. Every trainable tensor of a model is a named view into one
// contiguous value arena and one gradient arena (in declaration order), so an optimizer can
// update the whole model in one call, an all-reduce can bucket contiguous ranges, and a
// parameter server can own key ranges of chunks. Non-trained state (batch-norm running
// statistics) lives in a separate buffer arena.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compute/backend.h"
#include "compute/optimizer.h"

namespace shoal {

struct Initializer {
  enum Kind { uniform_fan_in, constant, normal } kind = constant;
  std::int64_t fan_in = 1;  // uniform_fan_in: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as PyTorch's default
  float value = 0;          // constant
  float stddev = 0;         // normal: N(0, stddev^2) (Kaiming's fan-out init: sqrt(2 / fan_out))
};

struct Parameter {
  std::string name;
  Shape shape;
  Initializer init;
  std::int64_t offset = 0;  // first element in the arena
  Tensor value;             // views into the arenas once allocated
  Tensor grad;
};

class ParameterSet {
 public:
  // Declaration, before allocate().
  Parameter* add_parameter(const std::string& name, const Shape& shape, Initializer init);
  Parameter* add_buffer(const std::string& name, const Shape& shape, float fill);

  // Lays out the arenas on the backend's device and fills every tensor from (seed, name).
  void allocate(Backend& backend, std::uint64_t seed);

  const std::vector<std::unique_ptr<Parameter>>& parameters() const { return parameters_; }
  const std::vector<std::unique_ptr<Parameter>>& buffers() const { return buffers_; }
  Tensor& values() { return values_; }
  Tensor& grads() { return grads_; }
  Tensor& buffer_values() { return buffer_values_; }
  std::int64_t parameter_count() const { return parameter_elements_; }
  const Parameter* find(const std::string& name) const;
  // The arena's elements of every 1-D parameter (biases, normalisation scales and shifts),
  // adjacent ones merged: what optimizer.decay_bias_and_norm = false exempts from decay.
  std::vector<ElementRange> bias_and_norm_ranges() const;

 private:
  std::vector<std::unique_ptr<Parameter>> parameters_, buffers_;
  std::int64_t parameter_elements_ = 0, buffer_elements_ = 0;
  Tensor values_, grads_, buffer_values_;
};

}  // namespace shoal
