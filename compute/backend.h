// Backend: the one place that touches a math library. Every op works on tensors of one device
// (NCHW activations, OIHW convolution weights, [out, in] linear weights). Layers, optimizers
// and the parameter server's update all go through this interface, so a CPU (oneDNN) and a
// CUDA (cuDNN/cuBLAS) implementation are interchangeable and checked against each other.
//
// Conventions: outputs are preallocated by the caller with the right shape; backward ops
// overwrite (never accumulate into) their outputs; opaque "saved" / "workspace" tensors are
// allocated by the backend on first use and only the same backend reads them back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "compute/tensor.h"

namespace shoal {

struct Conv2dParams {
  int stride = 1;
  int pad = 0;
  int groups = 1;  // grouped convolution: w is [K, C / groups, R, R]; groups == C == K: depthwise
};

enum class PoolKind { max, average };

struct PoolParams {
  PoolKind kind = PoolKind::max;
  int kernel = 2;
  int stride = 2;
  int pad = 0;
};

// Output spatial size of a convolution or pooling window.
inline std::int64_t window_output_size(std::int64_t in, int kernel, int stride, int pad) {
  return (in + 2 * pad - kernel) / stride + 1;
}

struct LossStats {
  double loss_sum = 0;       // sum over the batch of -log p(label)
  std::int64_t correct = 0;  // argmax == label
  std::int64_t count = 0;
};

struct SgdHyper {
  float lr = 0.01f;
  float momentum = 0;
  bool nesterov = false;
  float weight_decay = 0;  // L2, added to the gradient
};

struct AdamHyper {
  float lr = 1e-3f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0;
  bool decoupled = false;  // AdamW: decay the weights directly instead of adding to the gradient
  std::int64_t step = 1;   // 1-based, for bias correction
};

// Completion of device work. On the CPU every op has finished when it returns, so its events
// are complete when recorded; on a GPU an event marks a point in a stream.
class DeviceEvent {
 public:
  virtual ~DeviceEvent() = default;
  virtual bool ready() = 0;  // never blocks
  virtual void wait() = 0;   // blocks the calling thread until the work before the event is done
};

// Device memory in use by a backend: a caching pool on a GPU, plain allocations on the CPU.
struct MemoryStats {
  std::size_t in_use = 0;              // bytes handed out now
  std::size_t high_water = 0;          // most bytes handed out at once
  std::size_t reserved = 0;            // bytes held from the device (in use + cached)
  std::size_t device_allocations = 0;  // calls into the device allocator (cudaMalloc) so far
};

// "device memory: high-water 812.0 MiB, reserved 1024.0 MiB, 37 device allocations"
std::string describe_memory(const MemoryStats& stats);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string describe() const = 0;  // library versions, threads
  // Compute threads from now on (CPU; at most the count it was made with): a serving batch of one
  // sample runs faster on one thread than split across cores. No-op where it means nothing.
  virtual void limit_threads(int /*threads*/) {}

  // Memory.
  virtual Tensor allocate(const Shape& shape, DType dtype = DType::f32) = 0;  // zero-filled
  virtual void copy(const Tensor& src, Tensor& dst) = 0;                      // same device, same size
  virtual void copy_from_host(const void* src, Tensor& dst) = 0;
  virtual void copy_to_host(const Tensor& src, void* dst) = 0;
  virtual void fill(Tensor& t, float value) = 0;
  virtual void synchronize() = 0;

  // Streams, events and host staging. Ops run in issue order on the backend's compute stream;
  // these let a strategy overlap copies and communication with it. The defaults are the CPU's
  // (synchronous copies, events complete at once); a GPU backend overrides all of them.
  //
  // An event after every op issued so far.
  virtual std::shared_ptr<DeviceEvent> record_event();
  // Copies src to host memory dst on a copy stream, after every op issued so far; dst must be
  // allocate_host() memory on a GPU. The event completes when the bytes are in dst.
  virtual std::shared_ptr<DeviceEvent> copy_to_host_async(const Tensor& src, void* dst);
  // Copies host memory src into dst before any op issued later; src must stay unchanged until
  // the returned event completes.
  virtual std::shared_ptr<DeviceEvent> copy_from_host_async(const void* src, Tensor& dst);
  // A zero-filled host tensor the device can copy to and from asynchronously (pinned on a GPU).
  virtual Tensor allocate_host(const Shape& shape, DType dtype = DType::f32);
  // The native compute stream (cudaStream_t) for libraries that enqueue work on it; null on
  // the CPU.
  virtual void* native_stream() { return nullptr; }
  virtual MemoryStats memory_stats() const { return {}; }

  // Convolution, square kernels taken from w: x [N, C, H, W], w [K, C / groups, R, R],
  // y [N, K, P, Q].
  virtual void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y,
                              const Conv2dParams& p) = 0;
  virtual void conv2d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dParams& p) = 0;
  virtual void conv2d_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias,
                                       const Conv2dParams& p) = 0;

  // Fully connected: x [N, I] (any shape with N rows), w [O, I], y [N, O].
  virtual void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) = 0;
  virtual void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) = 0;
  virtual void linear_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias) = 0;

  virtual void relu_forward(const Tensor& x, Tensor& y) = 0;
  // Uses the forward output y (valid in place, since y > 0 iff x > 0).
  virtual void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) = 0;

  // y = min(max(x, lo), hi) (ReLU6: lo 0, hi 6). Backward uses the forward output y: dx = dy
  // where lo < y < hi, else 0 (valid in place, like relu_backward).
  virtual void clip_forward(const Tensor& x, Tensor& y, float lo, float hi) = 0;
  virtual void clip_backward(const Tensor& y, const Tensor& dy, Tensor& dx, float lo, float hi) = 0;

  // Concatenation along dimension 1 of tensors [N, C_i, ...] (same N and trailing dims) into
  // y [N, sum C_i, ...], and its backward: dy split back into the parts.
  virtual void concat_channels(const std::vector<const Tensor*>& parts, Tensor& y) = 0;
  virtual void split_channels(const Tensor& dy, const std::vector<Tensor*>& parts) = 0;

  virtual void pool_forward(const Tensor& x, Tensor& y, Tensor& workspace, const PoolParams& p, bool training) = 0;
  virtual void pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& workspace, Tensor& dx,
                             const PoolParams& p) = 0;

  // Batch norm over N (and H, W) per channel of x [N, C] or [N, C, H, W]. Training also updates
  // the running statistics: running = (1 - momentum) * running + momentum * batch (unbiased var).
  virtual void batch_norm_forward_training(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y,
                                           Tensor& running_mean, Tensor& running_var, Tensor& saved_mean,
                                           Tensor& saved_var, float momentum, float eps) = 0;
  virtual void batch_norm_forward_inference(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                            const Tensor& running_mean, const Tensor& running_var, Tensor& y,
                                            float eps) = 0;
  virtual void batch_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& saved_mean,
                                   const Tensor& saved_var, Tensor& dx, Tensor& dgamma, Tensor& dbeta, float eps) = 0;

  // Inverted dropout: y = x * mask / (1 - p). The mask is a function of (seed, element index)
  // only, so every backend draws the same one. Element i of x has index first_index + i (a
  // rank holding samples 32..63 of a global batch draws what one process would for them).
  virtual void dropout_forward(const Tensor& x, Tensor& y, Tensor& mask, float p, std::uint64_t seed,
                               std::uint64_t first_index = 0) = 0;
  virtual void dropout_backward(const Tensor& dy, const Tensor& mask, Tensor& dx) = 0;

  // logits [N, K], labels i32 [N]. With label smoothing e the target is
  // t = (1 - e) onehot(label) + e / K, the loss is -sum_j t_j log p_j (PyTorch's
  // CrossEntropyLoss(label_smoothing = e)), and dlogits, if given, receives
  // grad_scale * (softmax(logits) - t).
  virtual LossStats softmax_cross_entropy(const Tensor& logits, const Tensor& labels, Tensor* dlogits,
                                          float grad_scale, float label_smoothing = 0) = 0;

  // Element-wise.
  virtual void add(const Tensor& a, const Tensor& b, Tensor& out) = 0;  // out = a + b
  virtual void axpy(float alpha, const Tensor& x, Tensor& y) = 0;       // y += alpha * x
  virtual void scale(Tensor& x, float alpha) = 0;                       // x *= alpha
  virtual double sum_squares(const Tensor& x) = 0;
  virtual bool all_finite(const Tensor& x) = 0;  // no NaN or infinity

  // Optimizer updates on matching flat tensors (whole parameters or chunks of them).
  virtual void sgd_update(Tensor& param, const Tensor& grad, Tensor* velocity, const SgdHyper& h) = 0;
  virtual void adam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamHyper& h) = 0;
};

struct BackendOptions {
  Device device = Device::cpu();
  int threads = 0;   // 0: all cores
  bool tf32 = true;  // cuda: TF32 tensor cores for convolutions and matrix products
};

}  // namespace shoal
