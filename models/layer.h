// Layers: forward keeps what backward needs; backward writes parameter gradients (overwriting)
// and returns the input gradient. Outputs are owned by the layer and reallocated only when the
// batch shape changes. Every layer has a CPU implementation through the Backend and is checked
// against finite differences (tests/models/gradient_check_test.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "compute/backend.h"
#include "models/parameters.h"

namespace shoal {

// Sums a host buffer element-wise across the ranks of a synchronous job, in place.
using SumAcrossRanks = std::function<void(std::span<float>)>;

struct LayerContext {
  Backend& backend;
  bool training = true;
  std::uint64_t seed = 0;  // varies per step: dropout masks
  // Set in synchronous jobs with sync.batch_norm = sync: batch norm normalises with the
  // statistics of the global batch (every rank's samples).
  SumAcrossRanks sum_across_ranks = {};
  // Position of this batch's first sample in the global batch (sync: the rank's offset), so
  // per-sample randomness (dropout) is what one process with the whole batch would draw.
  std::int64_t sample_offset = 0;
};

// "3x32x32": a shape's dimensions; per_sample_text drops the batch dimension of [N, 3, 32, 32].
std::string dims_text(const Shape& shape);
std::string per_sample_text(const Shape& batch_shape);

// What a layer is, read-only: enough to write it out again (ONNX export, models/onnx.h).
struct LayerSpec {
  enum Kind { other, conv, linear, batch_norm, relu, clip, identity, flatten, global_avg_pool, max_pool, avg_pool,
              dropout } kind = other;  // other: a layer defined outside layer.cc (tests)
  std::int64_t in = 0, out = 0;       // conv, linear: widths; batch_norm: channels (both)
  int kernel = 0, stride = 1, pad = 0, groups = 1;  // conv, max_pool, avg_pool
  bool bias = false;                  // conv, linear
  float lo = 0, hi = 0;               // clip (relu6: 0, 6)
  float p = 0;                        // dropout
  float eps = 0, momentum = 0;        // batch_norm
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual LayerSpec spec() const { return {}; }
  virtual std::string describe() const = 0;  // "conv 1->32 3x3 pad 1"
  // The output shape for input shape x (with its batch dimension); throws ConfigError naming
  // both shapes when x does not fit this layer.
  virtual Shape output_shape(const Shape& input) const = 0;
  // Multiply-adds of one forward pass over input x (convolutions and matrix products only).
  virtual std::int64_t macs(const Shape& /*input*/) const { return 0; }
  // Declares parameters and buffers under `prefix` ("conv1."); called once before allocation.
  virtual void declare(ParameterSet& /*set*/, const std::string& /*prefix*/) {}
  virtual const Tensor& forward(LayerContext& ctx, const Tensor& x) = 0;
  // dy has the shape of the last forward output. When need_dx is false the input gradient
  // may be skipped (the first layer) and the returned tensor is undefined.
  virtual const Tensor& backward(LayerContext& ctx, const Tensor& dy, bool need_dx) = 0;
  // Parameters this layer owns, in declaration order.
  const std::vector<Parameter*>& parameters() const { return params_; }

 protected:
  // Returns t, reallocated on the backend if its shape differs.
  static Tensor& ensure(Backend& backend, Tensor& t, const Shape& shape);
  std::vector<Parameter*> params_;
};

// PyTorch's default initialisation of a layer with this fan-in: U(-1/sqrt(fan_in), +1/sqrt(fan_in)).
inline Initializer default_init(std::int64_t fan_in) { return Initializer{Initializer::uniform_fan_in, fan_in, 0, 0}; }

struct ConvSpec {
  std::int64_t in = 0, out = 0;
  int kernel = 3, stride = 1, pad = 0, groups = 1;
  bool bias = true;
  std::optional<Initializer> weight_init, bias_init;  // unset: default_init(in / groups * kernel^2)
};
struct LinearSpec {
  std::int64_t in = 0, out = 0;
  bool bias = true;
  std::optional<Initializer> weight_init, bias_init;  // unset: default_init(in)
};

std::unique_ptr<Layer> conv2d(const ConvSpec& spec);
std::unique_ptr<Layer> conv2d(std::int64_t in, std::int64_t out, int kernel, int stride, int pad, bool bias = true);
std::unique_ptr<Layer> linear(const LinearSpec& spec);
std::unique_ptr<Layer> linear(std::int64_t in, std::int64_t out);
std::unique_ptr<Layer> relu();
std::unique_ptr<Layer> clip(float lo, float hi);  // ReLU6: clip(0, 6)
std::unique_ptr<Layer> identity();
std::unique_ptr<Layer> max_pool(int kernel, int stride, int pad = 0);
std::unique_ptr<Layer> avg_pool(int kernel, int stride, int pad = 0);
std::unique_ptr<Layer> global_avg_pool();
std::unique_ptr<Layer> batch_norm(std::int64_t channels, float momentum = 0.1f, float eps = 1e-5f, float gamma = 1.f);
std::unique_ptr<Layer> dropout(float p, std::uint64_t salt);
std::unique_ptr<Layer> flatten();

}  // namespace shoal
