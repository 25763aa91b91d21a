// The CUDA backend: every Backend op on one GPU, in issue order on one compute stream.
// Convolution, pooling and batch norm use cuDNN's classic API, matrix products cuBLAS, and
// everything else Shoal's own kernels (kernels.cu), which run the per-element math the CPU
// backend runs (compute/kernel_math.h). Device memory comes from a caching pool (memory_pool.h),
// so a steady-state step never calls cudaMalloc or cudaFree; the host waits for the GPU only
// in the ops that return a value (softmax_cross_entropy, sum_squares, all_finite), in the
// synchronous copies and in synchronize().
//
// Where it differs from the CPU backend, invisibly through the interface:
// - batch norm's saved_var holds cuDNN's saved inverse standard deviation 1/sqrt(var + eps)
//   instead of the variance; only this backend reads it back (batch_norm_backward);
// - pooling needs no workspace (cuDNN's backward takes x and y), so the workspace tensor is
//   left untouched;
// - each convolution direction uses the algorithm cuDNN timed fastest for its shapes on first
//   use (cudnnFind*AlgorithmEx), within a workspace limit and, with TF32 off, in FP32 only.
//
// One thread at a time calls in, as with the CPU backend; it may be any thread (each call
// makes the backend's GPU current). Events it returns may be polled and waited on anywhere.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "compute/backend.h"
#include "compute/cuda/check.h"
#include "compute/cuda/cuda_device.h"
#include "compute/cuda/kernels.h"
#include "compute/cuda/memory_pool.h"
#include "base/error.h"
#include "compute/kernel_math.h"

namespace shoal::cuda {
namespace {

// A host wait on the GPU longer than this means the device is wedged (a healthy step takes
// milliseconds to seconds): it fails with DeviceError instead of hanging the process.
constexpr std::chrono::seconds kWaitLimit{600};
// The most workspace a convolution algorithm may use; the search times candidates within it.
constexpr std::size_t kConvWorkspaceLimit = std::size_t{1} << 30;
// cuBLAS's workspace, from the pool instead of its own cudaMalloc (NVIDIA's size for Hopper).
constexpr std::size_t kCublasWorkspace = std::size_t{32} << 20;

const float kOne = 1.f;
const float kZero = 0.f;

// ---- events --------------------------------------------------------------------------------------

// True once the work before `event` has finished; never blocks.
bool event_fired(cudaEvent_t event) {
  const cudaError_t status = cudaEventQuery(event);
  if (status == cudaErrorNotReady) {
    static_cast<void>(cudaGetLastError());  // "not ready" is no error: keep it from the next launch check
    return false;
  }
  check_cuda(status, "cudaEventQuery");
  return true;
}

// Blocks until `event` has fired: polls (yielding, then sleeping 20 us), bounded by kWaitLimit.
void wait_for_event(cudaEvent_t event, int device, const char* what) {
  const auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
  for (int polls = 0; !event_fired(event); ++polls) {
    if (std::chrono::steady_clock::now() > deadline)
      SHOAL_THROW(DeviceError, "cuda:" << device << ": " << what << " has not completed after " << kWaitLimit.count()
                                       << " s; the GPU looks hung");
    if (polls < 100)
      std::this_thread::yield();
    else
      std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

// cudaEvents recycled between the DeviceEvents the backend hands out (cudaEventCreate is not
// free). Shared by the backend and each event, so an event may outlive the backend. The
// event of an asynchronous copy keeps the source tensor's storage until it has fired, so the
// block is not reused while the copy stream still reads it.
class EventPool {
 public:
  explicit EventPool(int device) : device_(device) {}
  ~EventPool() {
    for (Retiring& r : retiring_) SHOAL_CUDA_WARN(cudaEventSynchronize(r.event));
    for (Retiring& r : retiring_) SHOAL_CUDA_WARN(cudaEventDestroy(r.event));
    for (cudaEvent_t event : free_) SHOAL_CUDA_WARN(cudaEventDestroy(event));
  }
  EventPool(const EventPool&) = delete;
  EventPool& operator=(const EventPool&) = delete;

  int device() const { return device_; }

  // An event to record (its previous use, if any, is over). Call with the device current.
  cudaEvent_t acquire() {
    std::vector<std::shared_ptr<Storage>> released;  // destroyed after the lock is let go
    {
      std::lock_guard lock(mutex_);
      while (!retiring_.empty() && event_fired(retiring_.front().event)) {
        free_.push_back(retiring_.front().event);
        released.push_back(std::move(retiring_.front().storage));
        retiring_.pop_front();
      }
      if (!free_.empty()) {
        cudaEvent_t event = free_.back();
        free_.pop_back();
        return event;
      }
    }
    cudaEvent_t event = nullptr;
    SHOAL_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return event;
  }

  // Takes an event back; with `storage`, both are held until the event has fired.
  void release(cudaEvent_t event, std::shared_ptr<Storage> storage) {
    std::lock_guard lock(mutex_);
    if (storage == nullptr)
      free_.push_back(event);
    else
      retiring_.push_back(Retiring{event, std::move(storage)});
  }

 private:
  struct Retiring {
    cudaEvent_t event;
    std::shared_ptr<Storage> storage;
  };
  const int device_;
  std::mutex mutex_;
  std::vector<cudaEvent_t> free_;
  std::deque<Retiring> retiring_;  // async copies' events, oldest first
};

class CudaEvent final : public DeviceEvent {
 public:
  CudaEvent(std::shared_ptr<EventPool> pool, const char* what, std::shared_ptr<Storage> source)
      : pool_(std::move(pool)), event_(pool_->acquire()), what_(what), source_(std::move(source)) {}
  ~CudaEvent() override { pool_->release(event_, std::move(source_)); }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  cudaEvent_t native() const { return event_; }
  bool ready() override { return event_fired(event_); }
  void wait() override { wait_for_event(event_, pool_->device(), what_); }

 private:
  std::shared_ptr<EventPool> pool_;
  cudaEvent_t event_;
  const char* what_;
  std::shared_ptr<Storage> source_;  // an async copy's source, kept until the copy is done
};

// ---- owned handles -------------------------------------------------------------------------------

struct StreamDeleter {
  void operator()(cudaStream_t stream) const noexcept { SHOAL_CUDA_WARN(cudaStreamDestroy(stream)); }
};
struct EventDeleter {
  void operator()(cudaEvent_t event) const noexcept { SHOAL_CUDA_WARN(cudaEventDestroy(event)); }
};
struct CudnnDeleter {
  void operator()(cudnnHandle_t handle) const noexcept { SHOAL_CUDNN_WARN(cudnnDestroy(handle)); }
};
struct CublasDeleter {
  void operator()(cublasHandle_t handle) const noexcept { SHOAL_CUBLAS_WARN(cublasDestroy(handle)); }
};
struct TensorDescriptorDeleter {
  void operator()(cudnnTensorDescriptor_t d) const noexcept { SHOAL_CUDNN_WARN(cudnnDestroyTensorDescriptor(d)); }
};
struct FilterDescriptorDeleter {
  void operator()(cudnnFilterDescriptor_t d) const noexcept { SHOAL_CUDNN_WARN(cudnnDestroyFilterDescriptor(d)); }
};
struct ConvolutionDescriptorDeleter {
  void operator()(cudnnConvolutionDescriptor_t d) const noexcept {
    SHOAL_CUDNN_WARN(cudnnDestroyConvolutionDescriptor(d));
  }
};
struct PoolingDescriptorDeleter {
  void operator()(cudnnPoolingDescriptor_t d) const noexcept { SHOAL_CUDNN_WARN(cudnnDestroyPoolingDescriptor(d)); }
};

template <typename Handle, typename Deleter>
using Owned = std::unique_ptr<std::remove_pointer_t<Handle>, Deleter>;
using Stream = Owned<cudaStream_t, StreamDeleter>;
using Event = Owned<cudaEvent_t, EventDeleter>;
using CudnnHandle = Owned<cudnnHandle_t, CudnnDeleter>;
using CublasHandle = Owned<cublasHandle_t, CublasDeleter>;
using TensorDescriptor = Owned<cudnnTensorDescriptor_t, TensorDescriptorDeleter>;
using FilterDescriptor = Owned<cudnnFilterDescriptor_t, FilterDescriptorDeleter>;
using ConvolutionDescriptor = Owned<cudnnConvolutionDescriptor_t, ConvolutionDescriptorDeleter>;
using PoolingDescriptor = Owned<cudnnPoolingDescriptor_t, PoolingDescriptorDeleter>;

int to_int(std::int64_t value, const char* op, const char* what) {
  SHOAL_REQUIRE(value >= 0 && value <= std::numeric_limits<int>::max(), DeviceError,
                op << ": " << what << " = " << value << " is beyond the int range of cuDNN and cuBLAS");
  return static_cast<int>(value);
}

// An NCHW float descriptor; [N, C] is taken as [N, C, 1, 1].
TensorDescriptor make_tensor_descriptor(const Shape& s, const char* op) {
  SHOAL_ASSERT(s.rank() == 2 || s.rank() == 4, op << ": needs [N, C] or [N, C, H, W], got " << s.str());
  cudnnTensorDescriptor_t raw = nullptr;
  SHOAL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&raw));
  TensorDescriptor d(raw);
  SHOAL_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d.get(), CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, to_int(s[0], op, "N"),
                                               to_int(s[1], op, "C"), to_int(s.rank() == 4 ? s[2] : 1, op, "H"),
                                               to_int(s.rank() == 4 ? s[3] : 1, op, "W")));
  return d;
}

// Builds cache keys like "conv:64,1,28,28:32,3:1,1".
std::string make_key(const char* op, std::initializer_list<std::int64_t> values) {
  std::string key(op);
  for (auto v : values) {
    key += ':';
    key += std::to_string(v);
  }
  return key;
}

// ---- cached cuDNN setups -------------------------------------------------------------------------

// One direction of a convolution: its descriptor (which carries the math type of the chosen
// algorithm), the algorithm and the workspace it needs.
template <typename Algo>
struct ConvDirection {
  ConvolutionDescriptor conv;
  bool chosen = false;
  Algo algo{};
  std::size_t workspace = 0;
};

struct ConvPlan {
  TensorDescriptor x, y, bias;
  FilterDescriptor w;
  ConvDirection<cudnnConvolutionFwdAlgo_t> forward;
  ConvDirection<cudnnConvolutionBwdDataAlgo_t> backward_data;
  ConvDirection<cudnnConvolutionBwdFilterAlgo_t> backward_filter;
};

struct PoolPlan {
  TensorDescriptor x, y;
  PoolingDescriptor pooling;
};

struct NormPlan {
  TensorDescriptor x;
  TensorDescriptor channels;  // 1 x C x 1 x 1, derived for CUDNN_BATCHNORM_SPATIAL
};

// The fastest candidate (cuDNN sorts them by time) that succeeded, fits in `limit` bytes of
// workspace and keeps FP32 data in at least TF32 (or, with TF32 off, in full FP32).
template <typename Perf>
const Perf* fastest_usable(const std::vector<Perf>& results, int count, std::size_t limit, bool tf32) {
  for (int i = 0; i < count; ++i) {
    const Perf& r = results[static_cast<std::size_t>(i)];
    if (r.status != CUDNN_STATUS_SUCCESS || r.memory > limit) continue;
    if (r.mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION) continue;  // FP16 down-conversion
    if (!tf32 && r.mathType == CUDNN_TENSOR_OP_MATH) continue;
    return &r;
  }
  return nullptr;
}

// ---- the backend ---------------------------------------------------------------------------------

class CudaBackend final : public Backend {
 public:
  CudaBackend(int index, bool tf32) : index_(index), device_(Device::cuda(index)), tf32_(tf32) {
    int count = 0;
    SHOAL_CUDA_CHECK(cudaGetDeviceCount(&count));
    SHOAL_REQUIRE(index >= 0 && index < count, DeviceError,
                  "cuda:" << index << " requested, but " << count << " GPU(s) are visible");
    SHOAL_CUDA_CHECK(cudaSetDevice(index));
    cudaDeviceProp prop{};
    SHOAL_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));

    pool_ = CachingAllocator::create(MemoryKind::device, index);
    pinned_ = CachingAllocator::create(MemoryKind::pinned_host, index);
    events_ = std::make_shared<EventPool>(index);
    compute_ = make_stream();
    copy_ = make_stream();
    compute_mark_ = make_event();
    sync_mark_ = make_event();

    cudnnHandle_t cudnn = nullptr;
    SHOAL_CUDNN_CHECK(cudnnCreate(&cudnn));
    cudnn_.reset(cudnn);
    SHOAL_CUDNN_CHECK(cudnnSetStream(cudnn_.get(), compute_.get()));

    cublasHandle_t cublas = nullptr;
    SHOAL_CUBLAS_CHECK(cublasCreate(&cublas));
    cublas_.reset(cublas);
    SHOAL_CUBLAS_CHECK(cublasSetStream(cublas_.get(), compute_.get()));
    // TF32 tensor cores for FP32 products, or plain FP32 with FP32 reductions throughout.
    const auto math =
        tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
             : static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    SHOAL_CUBLAS_CHECK(cublasSetMathMode(cublas_.get(), math));
    cublas_workspace_ = pool_->allocate_storage(kCublasWorkspace);
    SHOAL_CUBLAS_CHECK(cublasSetWorkspace(cublas_.get(), cublas_workspace_->data(), kCublasWorkspace));

    scalars_ = pool_->allocate_storage(sizeof(DeviceScalars));
    partials_ = pool_->allocate_storage(kReductionBlocks * sizeof(double));
    host_scalars_ = pinned_->allocate_storage(sizeof(DeviceScalars));

    describe_ = describe_device(prop);
  }

  ~CudaBackend() override {
    // Queued work must finish before the buffers, handles and streams it uses go away.
    try {
      use_device();
      drain(compute_.get(), "the compute stream's work at shutdown");
      drain(copy_.get(), "the copy stream's work at shutdown");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shoal: cuda:%d: shutting down the backend: %s\n", index_, e.what());
    }
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return device_; }
  std::string describe() const override { return describe_; }

  // ---- memory ------------------------------------------------------------------------------------

  Tensor allocate(const Shape& shape, DType dtype) override {
    use_device();
    for (auto d : shape.dims()) SHOAL_ASSERT(d >= 0, "negative dimension in " << shape.str());
    const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
    std::shared_ptr<Storage> storage = pool_->allocate_storage(bytes);
    if (bytes > 0) SHOAL_CUDA_CHECK(cudaMemsetAsync(storage->data(), 0, bytes, compute()));
    return Tensor::from_storage(std::move(storage), shape, dtype, device_);
  }

  void copy(const Tensor& src, Tensor& dst) override {
    use_device();
    expect_here(src, "copy", "src");
    expect_here(dst, "copy", "dst");
    SHOAL_ASSERT(src.bytes() == dst.bytes(), "copy of " << src.describe() << " into " << dst.describe());
    if (src.raw() == dst.raw() || src.bytes() == 0) return;
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.bytes(), cudaMemcpyDeviceToDevice, compute()));
  }

  void copy_from_host(const void* src, Tensor& dst) override {
    use_device();
    expect_here(dst, "copy_from_host", "dst");
    if (dst.bytes() == 0) return;
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src, dst.bytes(), cudaMemcpyHostToDevice, compute()));
    drain(compute(), "copy_from_host");  // the caller may reuse src on return
  }

  void copy_to_host(const Tensor& src, void* dst) override {
    use_device();
    expect_here(src, "copy_to_host", "src");
    if (src.bytes() == 0) return;
    SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst, src.raw(), src.bytes(), cudaMemcpyDeviceToHost, compute()));
    drain(compute(), "copy_to_host");
  }

  void fill(Tensor& t, float value) override {
    use_device();
    expect_f32(t, "fill", "t");
    launch_fill(t.data<float>(), t.numel(), value, compute());
  }

  void synchronize() override {
    use_device();
    drain(compute(), "synchronize (compute stream)");
    drain(copy_.get(), "synchronize (copy stream)");
  }

  // ---- streams, events, host staging -------------------------------------------------------------

  std::shared_ptr<DeviceEvent> record_event() override {
    use_device();
    return event_on(compute(), "an event on the compute stream", nullptr);
  }

  std::shared_ptr<DeviceEvent> copy_to_host_async(const Tensor& src, void* dst) override {
    use_device();
    expect_here(src, "copy_to_host_async", "src");
    SHOAL_CUDA_CHECK(cudaEventRecord(compute_mark_.get(), compute()));
    SHOAL_CUDA_CHECK(cudaStreamWaitEvent(copy_.get(), compute_mark_.get(), 0));
    if (src.bytes() > 0)
      SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst, src.raw(), src.bytes(), cudaMemcpyDeviceToHost, copy_.get()));
    // The event holds src's storage: dropping src before the copy is done must not let the
    // pool hand its block to the compute stream while the copy stream still reads it.
    return event_on(copy_.get(), "copy_to_host_async", src.storage());
  }

  std::shared_ptr<DeviceEvent> copy_from_host_async(const void* src, Tensor& dst) override {
    use_device();
    expect_here(dst, "copy_from_host_async", "dst");
    if (dst.bytes() > 0)
      SHOAL_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src, dst.bytes(), cudaMemcpyHostToDevice, compute()));
    return event_on(compute(), "copy_from_host_async", nullptr);
  }

  Tensor allocate_host(const Shape& shape, DType dtype) override {
    use_device();
    for (auto d : shape.dims()) SHOAL_ASSERT(d >= 0, "negative dimension in " << shape.str());
    const std::size_t bytes = static_cast<std::size_t>(shape.numel()) * dtype_size(dtype);
    std::shared_ptr<Storage> storage = pinned_->allocate_storage(bytes);
    if (bytes > 0) std::memset(storage->data(), 0, bytes);
    return Tensor::from_storage(std::move(storage), shape, dtype, Device::cpu());
  }

  void* native_stream() override { return compute(); }
  MemoryStats memory_stats() const override { return pool_->stats(); }

  // ---- convolution -------------------------------------------------------------------------------

  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y, const Conv2dParams& p) override {
    static constexpr const char* op = "conv2d_forward";
    use_device();
    expect_f32(x, op, "x");
    expect_f32(w, op, "w");
    expect_f32(y, op, "y");
    expect_conv_output(x.shape(), w.shape(), y.shape(), p, op);
    if (bias != nullptr) {
      expect_f32(*bias, op, "bias");
      SHOAL_ASSERT(bias->numel() == w.shape()[0], op << ": bias " << bias->describe() << " for w " << w.describe());
    }
    ConvPlan& plan = conv_plan(x.shape(), w.shape(), p, op);
    auto& d = plan.forward;
    if (!d.chosen) {
      int max_count = 0;
      SHOAL_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(cudnn(), &max_count));
      std::vector<cudnnConvolutionFwdAlgoPerf_t> results(static_cast<std::size_t>(max_count));
      int count = 0;
      SearchScratch scratch(*pool_, search_limit());
      SHOAL_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(cudnn(), plan.x.get(), x.raw(), plan.w.get(), w.raw(),
                                                               d.conv.get(), plan.y.get(), y.raw(), max_count, &count,
                                                               results.data(), scratch.data(), scratch.bytes()));
      adopt(d, results, count, scratch, op, x, w);
    }
    SHOAL_CUDNN_CHECK(cudnnConvolutionForward(cudnn(), &kOne, plan.x.get(), x.raw(), plan.w.get(), w.raw(),
                                              d.conv.get(), d.algo, workspace(d.workspace), d.workspace, &kZero,
                                              plan.y.get(), y.raw()));
    if (bias != nullptr)
      SHOAL_CUDNN_CHECK(cudnnAddTensor(cudnn(), &kOne, plan.bias.get(), bias->raw(), &kOne, plan.y.get(), y.raw()));
  }

  void conv2d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dParams& p) override {
    static constexpr const char* op = "conv2d_backward_data";
    use_device();
    expect_f32(dy, op, "dy");
    expect_f32(w, op, "w");
    expect_f32(dx, op, "dx");
    expect_conv_output(dx.shape(), w.shape(), dy.shape(), p, op);
    ConvPlan& plan = conv_plan(dx.shape(), w.shape(), p, op);
    auto& d = plan.backward_data;
    if (!d.chosen) {
      int max_count = 0;
      SHOAL_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnn(), &max_count));
      std::vector<cudnnConvolutionBwdDataAlgoPerf_t> results(static_cast<std::size_t>(max_count));
      int count = 0;
      SearchScratch scratch(*pool_, search_limit());
      SHOAL_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
          cudnn(), plan.w.get(), w.raw(), plan.y.get(), dy.raw(), d.conv.get(), plan.x.get(), dx.raw(), max_count,
          &count, results.data(), scratch.data(), scratch.bytes()));
      adopt(d, results, count, scratch, op, dx, w);
    }
    SHOAL_CUDNN_CHECK(cudnnConvolutionBackwardData(cudnn(), &kOne, plan.w.get(), w.raw(), plan.y.get(), dy.raw(),
                                                   d.conv.get(), d.algo, workspace(d.workspace), d.workspace, &kZero,
                                                   plan.x.get(), dx.raw()));
  }

  void conv2d_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias,
                               const Conv2dParams& p) override {
    static constexpr const char* op = "conv2d_backward_weights";
    use_device();
    expect_f32(x, op, "x");
    expect_f32(dy, op, "dy");
    expect_f32(dw, op, "dw");
    expect_conv_output(x.shape(), dw.shape(), dy.shape(), p, op);
    if (dbias != nullptr) {
      expect_f32(*dbias, op, "dbias");
      SHOAL_ASSERT(dbias->numel() == dw.shape()[0],
                   op << ": dbias " << dbias->describe() << " for dw " << dw.describe());
    }
    ConvPlan& plan = conv_plan(x.shape(), dw.shape(), p, op);
    auto& d = plan.backward_filter;
    if (!d.chosen) {
      int max_count = 0;
      SHOAL_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnn(), &max_count));
      std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> results(static_cast<std::size_t>(max_count));
      int count = 0;
      SearchScratch scratch(*pool_, search_limit());
      SHOAL_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
          cudnn(), plan.x.get(), x.raw(), plan.y.get(), dy.raw(), d.conv.get(), plan.w.get(), dw.raw(), max_count,
          &count, results.data(), scratch.data(), scratch.bytes()));
      adopt(d, results, count, scratch, op, x, dw);
    }
    SHOAL_CUDNN_CHECK(cudnnConvolutionBackwardFilter(cudnn(), &kOne, plan.x.get(), x.raw(), plan.y.get(), dy.raw(),
                                                     d.conv.get(), d.algo, workspace(d.workspace), d.workspace, &kZero,
                                                     plan.w.get(), dw.raw()));
    if (dbias != nullptr)
      SHOAL_CUDNN_CHECK(
          cudnnConvolutionBackwardBias(cudnn(), &kOne, plan.y.get(), dy.raw(), &kZero, plan.bias.get(), dbias->raw()));
  }

  // ---- fully connected (cuBLAS, column-major) ----------------------------------------------------
  // A row-major [r, c] matrix is a column-major [c, r] one, its transpose, so each row-major
  // product is computed as its transpose: y = x w^T becomes y^T = w x^T, and so on.

  void linear_forward(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    static constexpr const char* op = "linear_forward";
    use_device();
    expect_f32(x, op, "x");
    expect_f32(w, op, "w");
    expect_f32(y, op, "y");
    SHOAL_ASSERT(w.shape().rank() == 2 && x.shape().rank() >= 1 && cols(x) == w.shape()[1] &&
                     y.numel() == rows(x) * w.shape()[0],
                 "bad linear shapes x " << x.describe() << " w " << w.describe() << " y " << y.describe());
    const std::int64_t n = rows(x), in = w.shape()[1], out = w.shape()[0];
    float beta = 0.f;
    if (bias != nullptr) {
      expect_f32(*bias, op, "bias");
      SHOAL_ASSERT(bias->numel() == out, op << ": bias " << bias->describe() << " for w " << w.describe());
      launch_broadcast_rows(bias->data<float>(), y.data<float>(), n, out, compute());
      beta = 1.f;
    }
    // y^T [out, n] = (w^T [in, out])^T x^T [in, n]
    gemm(CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, w.data<float>(), in, x.data<float>(), in, beta, y.data<float>(), out,
         op);
  }

  void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    static constexpr const char* op = "linear_backward_data";
    use_device();
    expect_f32(dy, op, "dy");
    expect_f32(w, op, "w");
    expect_f32(dx, op, "dx");
    SHOAL_ASSERT(w.shape().rank() == 2 && dx.shape().rank() >= 1,
                 op << ": w " << w.describe() << " dx " << dx.describe());
    const std::int64_t n = rows(dx), in = w.shape()[1], out = w.shape()[0];
    SHOAL_ASSERT(cols(dx) == in && dy.numel() == n * out, "bad linear backward shapes");
    // dx^T [in, n] = w^T [in, out] dy^T [out, n]
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, w.data<float>(), in, dy.data<float>(), out, 0.f, dx.data<float>(), in,
         op);
  }

  void linear_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* dbias) override {
    static constexpr const char* op = "linear_backward_weights";
    use_device();
    expect_f32(x, op, "x");
    expect_f32(dy, op, "dy");
    expect_f32(dw, op, "dw");
    SHOAL_ASSERT(dw.shape().rank() == 2 && x.shape().rank() >= 1,
                 op << ": x " << x.describe() << " dw " << dw.describe());
    const std::int64_t n = rows(x), in = dw.shape()[1], out = dw.shape()[0];
    SHOAL_ASSERT(cols(x) == in && dy.numel() == n * out, "bad linear backward shapes");
    // dw^T [in, out] = x^T [in, n] (dy^T [out, n])^T
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x.data<float>(), in, dy.data<float>(), out, 0.f, dw.data<float>(), in,
         op);
    if (dbias == nullptr) return;
    expect_f32(*dbias, op, "dbias");
    SHOAL_ASSERT(dbias->numel() == out, op << ": dbias " << dbias->describe() << " for dw " << dw.describe());
    if (n == 0) {
      SHOAL_CUDA_CHECK(cudaMemsetAsync(dbias->raw(), 0, dbias->bytes(), compute()));
      return;
    }
    // dbias [out] = dy^T [out, n] ones [n]: the column sums of dy.
    SHOAL_CUBLAS_CHECK(cublasSgemv(cublas(), CUBLAS_OP_N, to_int(out, op, "outputs"), to_int(n, op, "rows"), &kOne,
                                   dy.data<float>(), to_int(std::max<std::int64_t>(1, out), op, "outputs"), ones(n), 1,
                                   &kZero, dbias->data<float>(), 1));
  }

  // ---- activations, pooling ----------------------------------------------------------------------

  void relu_forward(const Tensor& x, Tensor& y) override {
    use_device();
    expect_f32(x, "relu_forward", "x");
    expect_f32(y, "relu_forward", "y");
    expect_same_numel(x, y, "relu_forward");
    launch_relu_forward(x.data<float>(), y.data<float>(), x.numel(), compute());
  }

  void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) override {
    use_device();
    expect_f32(y, "relu_backward", "y");
    expect_f32(dy, "relu_backward", "dy");
    expect_f32(dx, "relu_backward", "dx");
    expect_same_numel(y, dy, "relu_backward");
    expect_same_numel(y, dx, "relu_backward");
    launch_relu_backward(y.data<float>(), dy.data<float>(), dx.data<float>(), y.numel(), compute());
  }

  void clip_forward(const Tensor& x, Tensor& y, float lo, float hi) override {
    use_device();
    expect_f32(x, "clip_forward", "x");
    expect_f32(y, "clip_forward", "y");
    expect_same_numel(x, y, "clip_forward");
    launch_clip_forward(x.data<float>(), y.data<float>(), x.numel(), lo, hi, compute());
  }

  void clip_backward(const Tensor& y, const Tensor& dy, Tensor& dx, float lo, float hi) override {
    use_device();
    expect_f32(y, "clip_backward", "y");
    expect_f32(dy, "clip_backward", "dy");
    expect_f32(dx, "clip_backward", "dx");
    expect_same_numel(y, dy, "clip_backward");
    expect_same_numel(y, dx, "clip_backward");
    launch_clip_backward(y.data<float>(), dy.data<float>(), dx.data<float>(), y.numel(), lo, hi, compute());
  }

  // ---- channel concatenation -------------------------------------------------------------------
  // Part i of [N, C_i, ...] is N rows of C_i * inner floats; in the whole [N, sum C_i, ...] those
  // rows sit side by side, so each part is one strided 2-D copy (N rows, pitch the whole row).

  void concat_channels(const std::vector<const Tensor*>& parts, Tensor& y) override {
    static constexpr const char* op = "concat_channels";
    use_device();
    expect_f32(y, op, "y");
    for_each_part(
        y, parts, op, [&](float* whole, const Tensor& part, std::size_t pitch, std::size_t width, std::size_t rows) {
          SHOAL_CUDA_CHECK(
              cudaMemcpy2DAsync(whole, pitch, part.raw(), width, width, rows, cudaMemcpyDeviceToDevice, compute()));
        });
  }

  void split_channels(const Tensor& dy, const std::vector<Tensor*>& parts) override {
    static constexpr const char* op = "split_channels";
    use_device();
    expect_f32(dy, op, "dy");
    const std::vector<const Tensor*> outputs(parts.begin(), parts.end());
    for_each_part(
        dy, outputs, op, [&](float* whole, const Tensor& part, std::size_t pitch, std::size_t width, std::size_t rows) {
          SHOAL_CUDA_CHECK(
              cudaMemcpy2DAsync(part.raw(), width, whole, pitch, width, rows, cudaMemcpyDeviceToDevice, compute()));
        });
  }

  void pool_forward(const Tensor& x, Tensor& y, Tensor& /*workspace*/, const PoolParams& p,
                    bool /*training*/) override {
    static constexpr const char* op = "pool_forward";
    use_device();
    expect_f32(x, op, "x");
    expect_f32(y, op, "y");
    PoolPlan& plan = pool_plan(x.shape(), y.shape(), p, op);
    SHOAL_CUDNN_CHECK(
        cudnnPoolingForward(cudnn(), plan.pooling.get(), &kOne, plan.x.get(), x.raw(), &kZero, plan.y.get(), y.raw()));
  }

  void pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& /*workspace*/, Tensor& dx,
                     const PoolParams& p) override {
    static constexpr const char* op = "pool_backward";
    use_device();
    expect_f32(x, op, "x");
    expect_f32(y, op, "y");
    expect_f32(dy, op, "dy");
    expect_f32(dx, op, "dx");
    SHOAL_ASSERT(dx.shape() == x.shape() && dy.shape() == y.shape(), op << ": x " << x.describe() << " dx "
                                                                        << dx.describe() << " y " << y.describe()
                                                                        << " dy " << dy.describe());
    PoolPlan& plan = pool_plan(x.shape(), y.shape(), p, op);
    SHOAL_CUDNN_CHECK(cudnnPoolingBackward(cudnn(), plan.pooling.get(), &kOne, plan.y.get(), y.raw(), plan.y.get(),
                                           dy.raw(), plan.x.get(), x.raw(), &kZero, plan.x.get(), dx.raw()));
  }

  // ---- batch norm (cuDNN, spatial) ---------------------------------------------------------------

  void batch_norm_forward_training(const Tensor& x, const Tensor& gamma, const Tensor& beta, Tensor& y,
                                   Tensor& running_mean, Tensor& running_var, Tensor& saved_mean, Tensor& saved_var,
                                   float momentum, float eps) override {
    static constexpr const char* op = "batch_norm_forward_training";
    use_device();
    const std::int64_t channels = expect_norm_args(x, gamma, y, "y", op, eps);
    expect_channels(beta, channels, op, "beta");
    expect_channels(running_mean, channels, op, "running_mean");
    expect_channels(running_var, channels, op, "running_var");
    if (!reusable(saved_mean, channels)) saved_mean = allocate(Shape{channels}, DType::f32);
    if (!reusable(saved_var, channels)) saved_var = allocate(Shape{channels}, DType::f32);
    NormPlan& plan = norm_plan(x.shape(), op);
    // cuDNN: running = (1 - factor) running + factor batch, with the unbiased batch variance
    // (as the CPU backend); saved_var receives the inverse standard deviation.
    SHOAL_CUDNN_CHECK(cudnnBatchNormalizationForwardTraining(
        cudnn(), CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, plan.x.get(), x.raw(), plan.x.get(), y.raw(),
        plan.channels.get(), gamma.raw(), beta.raw(), static_cast<double>(momentum), running_mean.raw(),
        running_var.raw(), static_cast<double>(eps), saved_mean.raw(), saved_var.raw()));
  }

  void batch_norm_forward_inference(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    const Tensor& running_mean, const Tensor& running_var, Tensor& y,
                                    float eps) override {
    static constexpr const char* op = "batch_norm_forward_inference";
    use_device();
    const std::int64_t channels = expect_norm_args(x, gamma, y, "y", op, eps);
    expect_channels(beta, channels, op, "beta");
    expect_channels(running_mean, channels, op, "running_mean");
    expect_channels(running_var, channels, op, "running_var");
    NormPlan& plan = norm_plan(x.shape(), op);
    SHOAL_CUDNN_CHECK(cudnnBatchNormalizationForwardInference(
        cudnn(), CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, plan.x.get(), x.raw(), plan.x.get(), y.raw(),
        plan.channels.get(), gamma.raw(), beta.raw(), running_mean.raw(), running_var.raw(), static_cast<double>(eps)));
  }

  void batch_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& gamma, const Tensor& saved_mean,
                           const Tensor& saved_var, Tensor& dx, Tensor& dgamma, Tensor& dbeta, float eps) override {
    static constexpr const char* op = "batch_norm_backward";
    use_device();
    const std::int64_t channels = expect_norm_args(x, gamma, dy, "dy", op, eps);
    expect_f32(dx, op, "dx");
    SHOAL_ASSERT(dx.shape() == x.shape(), op << ": dx " << dx.describe() << " for x " << x.describe());
    expect_channels(saved_mean, channels, op, "saved_mean");
    expect_channels(saved_var, channels, op, "saved_var");
    expect_channels(dgamma, channels, op, "dgamma");
    expect_channels(dbeta, channels, op, "dbeta");
    NormPlan& plan = norm_plan(x.shape(), op);
    // saved_var is the inverse standard deviation batch_norm_forward_training left there.
    SHOAL_CUDNN_CHECK(cudnnBatchNormalizationBackward(
        cudnn(), CUDNN_BATCHNORM_SPATIAL, &kOne, &kZero, &kOne, &kZero, plan.x.get(), x.raw(), plan.x.get(), dy.raw(),
        plan.x.get(), dx.raw(), plan.channels.get(), gamma.raw(), dgamma.raw(), dbeta.raw(), static_cast<double>(eps),
        saved_mean.raw(), saved_var.raw()));
  }

  // ---- dropout, loss, element-wise ---------------------------------------------------------------

  void dropout_forward(const Tensor& x, Tensor& y, Tensor& mask, float p, std::uint64_t seed,
                       std::uint64_t first_index) override {
    use_device();
    expect_f32(x, "dropout_forward", "x");
    expect_f32(y, "dropout_forward", "y");
    expect_same_numel(x, y, "dropout_forward");
    if (!reusable(mask, x.numel())) mask = allocate(x.shape(), DType::f32);
    launch_dropout_forward(x.data<float>(), y.data<float>(), mask.data<float>(), x.numel(), p, seed, first_index,
                           compute());
  }

  void dropout_backward(const Tensor& dy, const Tensor& mask, Tensor& dx) override {
    use_device();
    expect_f32(dy, "dropout_backward", "dy");
    expect_f32(mask, "dropout_backward", "mask");
    expect_f32(dx, "dropout_backward", "dx");
    expect_same_numel(dy, mask, "dropout_backward");
    expect_same_numel(dy, dx, "dropout_backward");
    launch_multiply(dy.data<float>(), mask.data<float>(), dx.data<float>(), dy.numel(), compute());
  }

  LossStats softmax_cross_entropy(const Tensor& logits, const Tensor& labels, Tensor* dlogits, float grad_scale,
                                  float label_smoothing) override {
    static constexpr const char* op = "softmax_cross_entropy";
    use_device();
    expect_f32(logits, op, "logits");
    expect_here(labels, op, "labels");
    SHOAL_ASSERT(labels.dtype() == DType::i32, op << ": labels must be i32, got " << labels.describe());
    SHOAL_ASSERT(logits.shape().rank() == 2 && labels.numel() == logits.shape()[0],
                 "loss shapes " << logits.describe() << " / " << labels.describe());
    const std::int64_t n = logits.shape()[0], k = logits.shape()[1];
    if (dlogits != nullptr) {
      expect_f32(*dlogits, op, "dlogits");
      expect_same_numel(logits, *dlogits, op);
    }
    LossStats stats;
    stats.count = n;
    if (n == 0) return stats;
    SHOAL_ASSERT(k > 0, op << ": logits " << logits.describe() << " have no classes");
    // Per-row scratch: n losses (double), then n statuses (i32).
    const std::size_t bytes = static_cast<std::size_t>(n) * (sizeof(double) + sizeof(std::int32_t));
    if (loss_rows_ == nullptr || loss_rows_->bytes() < bytes) loss_rows_ = pool_->allocate_storage(bytes);
    auto* row_loss = static_cast<double*>(loss_rows_->data());
    auto* row_status = reinterpret_cast<std::int32_t*>(row_loss + n);
    launch_softmax_cross_entropy(logits.data<float>(), labels.data<std::int32_t>(), n, k, grad_scale, label_smoothing,
                                 dlogits != nullptr ? dlogits->data<float>() : nullptr, row_loss, row_status, scalars(),
                                 compute());
    const LossTotals totals = read_scalars(op).loss;
    SHOAL_ASSERT(totals.first_bad_row < 0, "label " << totals.bad_label << " outside [0, " << k << ") (row "
                                                    << totals.first_bad_row << " of " << labels.describe() << ")");
    stats.loss_sum = totals.loss_sum;
    stats.correct = totals.correct;
    return stats;
  }

  void add(const Tensor& a, const Tensor& b, Tensor& out) override {
    use_device();
    expect_f32(a, "add", "a");
    expect_f32(b, "add", "b");
    expect_f32(out, "add", "out");
    expect_same_numel(a, b, "add");
    expect_same_numel(a, out, "add");
    launch_add(a.data<float>(), b.data<float>(), out.data<float>(), a.numel(), compute());
  }

  void axpy(float alpha, const Tensor& x, Tensor& y) override {
    use_device();
    expect_f32(x, "axpy", "x");
    expect_f32(y, "axpy", "y");
    expect_same_numel(x, y, "axpy");
    launch_axpy(alpha, x.data<float>(), y.data<float>(), x.numel(), compute());
  }

  void scale(Tensor& x, float alpha) override {
    use_device();
    expect_f32(x, "scale", "x");
    launch_scale(x.data<float>(), alpha, x.numel(), compute());
  }

  double sum_squares(const Tensor& x) override {
    use_device();
    expect_f32(x, "sum_squares", "x");
    launch_sum_squares(x.data<float>(), x.numel(), static_cast<double*>(partials_->data()), scalars(), compute());
    return read_scalars("sum_squares").sum_squares;
  }

  bool all_finite(const Tensor& x) override {
    use_device();
    expect_f32(x, "all_finite", "x");
    launch_non_finite(x.data<float>(), x.numel(), scalars(), compute());
    return read_scalars("all_finite").non_finite == 0;
  }

  // ---- optimizers --------------------------------------------------------------------------------

  void sgd_update(Tensor& param, const Tensor& grad, Tensor* velocity, const SgdHyper& h) override {
    use_device();
    expect_f32(param, "sgd_update", "param");
    expect_f32(grad, "sgd_update", "grad");
    expect_same_numel(param, grad, "sgd_update");
    const math::SgdCoeffs c{h.lr, h.momentum, h.weight_decay, h.nesterov};
    float* v = nullptr;
    if (velocity != nullptr && h.momentum != 0.f) {
      expect_f32(*velocity, "sgd_update", "velocity");
      expect_same_numel(param, *velocity, "sgd_update");
      v = velocity->data<float>();
    }
    launch_sgd(param.data<float>(), grad.data<float>(), v, param.numel(), c, compute());
  }

  void adam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamHyper& h) override {
    use_device();
    expect_f32(param, "adam_update", "param");
    expect_f32(grad, "adam_update", "grad");
    expect_f32(m, "adam_update", "m");
    expect_f32(v, "adam_update", "v");
    expect_same_numel(param, grad, "adam_update");
    expect_same_numel(param, m, "adam_update");
    expect_same_numel(param, v, "adam_update");
    SHOAL_ASSERT(h.step >= 1, "adam step must be >= 1");
    const math::AdamCoeffs c = math::adam_coeffs(h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.decoupled, h.step);
    launch_adam(param.data<float>(), grad.data<float>(), m.data<float>(), v.data<float>(), param.numel(), c, compute());
  }

 private:
  // Scratch for one algorithm search. The search may use up to kConvWorkspaceLimit, far more
  // than the chosen algorithm needs, so finish() hands the block back to the device rather
  // than keeping it in the cache; on an exception it goes to the cache.
  class SearchScratch {
   public:
    SearchScratch(CachingAllocator& pool, std::size_t bytes) : pool_(pool), block_(pool.allocate(bytes)) {}
    ~SearchScratch() { pool_.release(block_); }
    SearchScratch(const SearchScratch&) = delete;
    SearchScratch& operator=(const SearchScratch&) = delete;
    void* data() const { return block_.ptr; }
    std::size_t bytes() const { return block_.bytes; }
    void finish() {
      const CachingAllocator::Block block = block_;
      block_ = {};
      pool_.release_to_system(block);
    }

   private:
    CachingAllocator& pool_;
    CachingAllocator::Block block_;
  };

  cudaStream_t compute() const { return compute_.get(); }
  cudnnHandle_t cudnn() const { return cudnn_.get(); }
  cublasHandle_t cublas() const { return cublas_.get(); }
  DeviceScalars* scalars() const { return static_cast<DeviceScalars*>(scalars_->data()); }

  static Stream make_stream() {
    cudaStream_t stream = nullptr;
    SHOAL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    return Stream(stream);
  }

  static Event make_event() {
    cudaEvent_t event = nullptr;
    SHOAL_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    return Event(event);
  }

  std::string describe_device(const cudaDeviceProp& prop) const {
    int runtime = 0, driver = 0, cublas_version = 0;
    SHOAL_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
    SHOAL_CUDA_CHECK(cudaDriverGetVersion(&driver));
    SHOAL_CUBLAS_CHECK(cublasGetVersion(cublas(), &cublas_version));
    const std::size_t cudnn_version = cudnnGetVersion();
    auto cuda_text = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
    auto xyz = [](std::size_t v) {
      return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
    };
    char memory[32];
    std::snprintf(memory, sizeof(memory), "%.1f GiB", static_cast<double>(prop.totalGlobalMem) / (1u << 30));
    return device_.str() + " (" + prop.name + ", compute capability " + std::to_string(prop.major) + "." +
           std::to_string(prop.minor) + ", " + memory + "), CUDA runtime " + cuda_text(runtime) + ", driver " +
           cuda_text(driver) + ", cuDNN " + xyz(cudnn_version) + ", cuBLAS " +
           xyz(static_cast<std::size_t>(cublas_version)) + ", TF32 " + (tf32_ ? "on" : "off");
  }

  // Makes this backend's GPU current on the calling thread (kernels launched on another
  // device's stream fail). cudaGetDevice is a thread-local read, cheap enough per op, and
  // stays right when other code on the thread switches devices in between.
  void use_device() const {
    int current = -1;
    SHOAL_CUDA_CHECK(cudaGetDevice(&current));
    if (current != index_) SHOAL_CUDA_CHECK(cudaSetDevice(index_));
  }

  // Blocks until the work queued on `stream` so far has finished (bounded by kWaitLimit).
  void drain(cudaStream_t stream, const char* what) {
    SHOAL_CUDA_CHECK(cudaEventRecord(sync_mark_.get(), stream));
    wait_for_event(sync_mark_.get(), index_, what);
  }

  std::shared_ptr<DeviceEvent> event_on(cudaStream_t stream, const char* what, std::shared_ptr<Storage> source) {
    auto event = std::make_shared<CudaEvent>(events_, what, std::move(source));
    SHOAL_CUDA_CHECK(cudaEventRecord(event->native(), stream));
    return event;
  }

  // Copies the reduction results back once the work queued so far is done: the one host
  // synchronisation of a training step (the loss) or of a gradient check.
  const DeviceScalars& read_scalars(const char* what) {
    SHOAL_CUDA_CHECK(
        cudaMemcpyAsync(host_scalars_->data(), scalars(), sizeof(DeviceScalars), cudaMemcpyDeviceToHost, compute()));
    drain(compute(), what);
    return *static_cast<const DeviceScalars*>(host_scalars_->data());
  }

  // ---- validation ---------------------------------------------------------------------------------

  void expect_here(const Tensor& t, const char* op, const char* name) const {
    if (t.device() != device_)
      SHOAL_THROW(DeviceError,
                  op << ": " << name << " is " << t.describe() << ", but this backend computes on " << device_.str());
    SHOAL_ASSERT(t.raw() != nullptr || t.numel() == 0, op << ": " << name << " " << t.describe() << " has no memory");
  }

  void expect_f32(const Tensor& t, const char* op, const char* name) const {
    expect_here(t, op, name);
    SHOAL_ASSERT(t.dtype() == DType::f32, op << ": " << name << " must be f32, got " << t.describe());
  }

  static void expect_same_numel(const Tensor& a, const Tensor& b, const char* op) {
    SHOAL_ASSERT(a.numel() == b.numel(), op << ": size mismatch: " << a.describe() << " vs " << b.describe());
  }

  void expect_channels(const Tensor& t, std::int64_t channels, const char* op, const char* name) const {
    expect_f32(t, op, name);
    SHOAL_ASSERT(t.numel() == channels,
                 op << ": " << name << " " << t.describe() << " for " << channels << " channels");
  }

  // An opaque output the backend allocates on first use (as the CPU backend): reusable when it
  // is already an f32 tensor of this device with `numel` elements.
  bool reusable(const Tensor& t, std::int64_t numel) const {
    return t.device() == device_ && t.dtype() == DType::f32 && t.numel() == numel && (t.raw() != nullptr || numel == 0);
  }

  static void expect_conv_output(const Shape& xs, const Shape& ws, const Shape& ys, const Conv2dParams& p,
                                 const char* op) {
    SHOAL_ASSERT(xs.rank() == 4 && ws.rank() == 4 && p.groups >= 1 && xs[1] == ws[1] * p.groups &&
                     ws[0] % p.groups == 0 && ws[2] == ws[3],
                 op << ": bad convolution shapes x " << xs.str() << " w " << ws.str() << " groups " << p.groups);
    const Shape expected{xs[0], ws[0], window_output_size(xs[2], static_cast<int>(ws[2]), p.stride, p.pad),
                         window_output_size(xs[3], static_cast<int>(ws[3]), p.stride, p.pad)};
    SHOAL_ASSERT(ys == expected, op << ": output " << ys.str() << " for x " << xs.str() << " w " << ws.str()
                                    << " stride " << p.stride << " pad " << p.pad << " groups " << p.groups
                                    << ", expected " << expected.str());
  }

  // Checks the parts of a channel concatenation against the whole (each an f32 tensor of this
  // device, the same N, together filling the whole's rows, as the CPU backend asserts), then calls
  // copy(whole + offset, part, pitch, width, rows) per non-empty part: bytes of one row of the
  // whole and of the part, and N rows. Nothing is copied unless every part passes.
  template <typename Copy>
  void for_each_part(const Tensor& whole, const std::vector<const Tensor*>& parts, const char* op, Copy copy) const {
    SHOAL_ASSERT(whole.shape().rank() >= 1, op << ": " << whole.describe() << " has no batch dimension");
    const std::int64_t n = whole.shape()[0], whole_row = cols(whole);
    std::int64_t offset = 0;
    for (const Tensor* part : parts) {
      SHOAL_ASSERT(part != nullptr, op << ": a part is null");
      expect_f32(*part, op, "part");
      SHOAL_ASSERT(part->shape().rank() >= 1 && part->shape()[0] == n,
                   op << ": part " << part->describe() << " vs " << whole.describe());
      offset += cols(*part);
    }
    SHOAL_ASSERT(offset == whole_row, op << ": parts (" << offset << " floats a row) do not fill " << whole.describe()
                                         << " (" << whole_row << " a row)");
    if (n == 0) return;
    offset = 0;
    for (const Tensor* part : parts) {
      const std::int64_t row = cols(*part);
      if (row > 0)
        copy(static_cast<float*>(whole.raw()) + offset, *part, static_cast<std::size_t>(whole_row) * sizeof(float),
             static_cast<std::size_t>(row) * sizeof(float), static_cast<std::size_t>(n));
      offset += row;
    }
  }

  // Checks batch norm's x, gamma and the same-shape y (or dy); returns the channel count.
  std::int64_t expect_norm_args(const Tensor& x, const Tensor& gamma, const Tensor& y, const char* y_name,
                                const char* op, float eps) const {
    expect_f32(x, op, "x");
    expect_f32(y, op, y_name);
    SHOAL_ASSERT(x.shape().rank() == 2 || x.shape().rank() == 4,
                 op << ": batch norm needs [N, C] or [N, C, H, W], got " << x.describe());
    SHOAL_ASSERT(y.shape() == x.shape(), op << ": " << y_name << " " << y.describe() << " for x " << x.describe());
    const std::int64_t channels = x.shape()[1];
    expect_channels(gamma, channels, op, "gamma");
    SHOAL_REQUIRE(eps >= CUDNN_BN_MIN_EPSILON, ConfigError,
                  op << ": batch norm eps " << eps << " is below cuDNN's minimum " << CUDNN_BN_MIN_EPSILON);
    return channels;
  }

  static std::int64_t rows(const Tensor& t) { return t.shape()[0]; }
  static std::int64_t cols(const Tensor& t) { return t.numel() / std::max<std::int64_t>(1, t.shape()[0]); }

  // ---- cached setups ------------------------------------------------------------------------------

  ConvPlan& conv_plan(const Shape& xs, const Shape& ws, const Conv2dParams& p, const char* op) {
    const std::string key = make_key("conv", {xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], p.stride, p.pad, p.groups});
    auto it = convs_.find(key);
    if (it != convs_.end()) return *it->second;
    auto plan = std::make_unique<ConvPlan>();
    const Shape ys{xs[0], ws[0], window_output_size(xs[2], static_cast<int>(ws[2]), p.stride, p.pad),
                   window_output_size(xs[3], static_cast<int>(ws[3]), p.stride, p.pad)};
    plan->x = make_tensor_descriptor(xs, op);
    plan->y = make_tensor_descriptor(ys, op);
    plan->bias = make_tensor_descriptor(Shape{1, ws[0], 1, 1}, op);
    cudnnFilterDescriptor_t w = nullptr;
    SHOAL_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    plan->w.reset(w);
    // Grouped: the filter is [K, C / groups, R, R], as ws is; the descriptor carries the count.
    SHOAL_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, to_int(ws[0], op, "K"),
                                                 to_int(ws[1], op, "C / groups"), to_int(ws[2], op, "R"),
                                                 to_int(ws[3], op, "S")));
    plan->forward.conv = make_convolution(p, op);
    plan->backward_data.conv = make_convolution(p, op);
    plan->backward_filter.conv = make_convolution(p, op);
    return *convs_.emplace(key, std::move(plan)).first->second;
  }

  // Cross-correlation (no kernel flip, as oneDNN), FP32; TF32 allowed or FMA only; p.groups
  // groups (each of C / groups input and K / groups output channels).
  ConvolutionDescriptor make_convolution(const Conv2dParams& p, const char* op) const {
    SHOAL_ASSERT(p.stride >= 1 && p.pad >= 0 && p.groups >= 1,
                 op << ": stride " << p.stride << " pad " << p.pad << " groups " << p.groups);
    cudnnConvolutionDescriptor_t raw = nullptr;
    SHOAL_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&raw));
    ConvolutionDescriptor conv(raw);
    SHOAL_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(raw, p.pad, p.pad, p.stride, p.stride, 1, 1,
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    SHOAL_CUDNN_CHECK(cudnnSetConvolutionGroupCount(raw, p.groups));
    SHOAL_CUDNN_CHECK(cudnnSetConvolutionMathType(raw, tf32_ ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    return conv;
  }

  // The most workspace a search may time candidates with: the limit, or half the free memory.
  std::size_t search_limit() const {
    std::size_t free_bytes = 0, total_bytes = 0;
    SHOAL_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return std::min(kConvWorkspaceLimit, free_bytes / 2);
  }

  // Takes the search's winner for one direction and sets its descriptor's math type to the
  // one the winner was timed with (with TF32 off, FMA only, as searched).
  template <typename Algo, typename Perf>
  void adopt(ConvDirection<Algo>& d, const std::vector<Perf>& results, int count, SearchScratch& scratch,
             const char* op, const Tensor& x, const Tensor& w) {
    drain(compute(), "the convolution algorithm search");  // the scratch is idle before it is freed
    const std::size_t limit = scratch.bytes();
    scratch.finish();
    const Perf* best = fastest_usable(results, count, limit, tf32_);
    if (best == nullptr)
      SHOAL_THROW(DeviceError, op << ": cuDNN has no usable algorithm for x " << x.describe() << ", w " << w.describe()
                                  << " among " << count << " candidates (workspace limit " << limit << " bytes, TF32 "
                                  << (tf32_ ? "on" : "off") << ")");
    SHOAL_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv.get(), tf32_ ? best->mathType : CUDNN_FMA_MATH));
    d.algo = best->algo;
    d.workspace = best->memory;
    d.chosen = true;
  }

  // The shared convolution workspace, grown to the largest need seen; the old block goes back
  // to the pool (safe: everything that used it is queued on the same stream).
  void* workspace(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    if (workspace_ == nullptr || workspace_->bytes() < bytes) workspace_ = pool_->allocate_storage(bytes);
    return workspace_->data();
  }

  // A device vector of at least `count` ones (for column sums with gemv).
  const float* ones(std::int64_t count) {
    const std::size_t bytes = static_cast<std::size_t>(count) * sizeof(float);
    if (ones_ == nullptr || ones_->bytes() < bytes) {
      ones_ = pool_->allocate_storage(bytes);
      launch_fill(static_cast<float*>(ones_->data()), count, 1.f, compute());
    }
    return static_cast<const float*>(ones_->data());
  }

  // C [m, n] = op(A) op(B) + beta C, column-major, alpha 1.
  void gemm(cublasOperation_t ta, cublasOperation_t tb, std::int64_t m, std::int64_t n, std::int64_t k, const float* a,
            std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c, std::int64_t ldc,
            const char* op) {
    if (m == 0 || n == 0) return;
    auto ld = [op](std::int64_t v) { return to_int(std::max<std::int64_t>(1, v), op, "leading dimension"); };
    SHOAL_CUBLAS_CHECK(cublasSgemm(cublas(), ta, tb, to_int(m, op, "m"), to_int(n, op, "n"), to_int(k, op, "k"), &kOne,
                                   a, ld(lda), b, ld(ldb), &beta, c, ld(ldc)));
  }

  PoolPlan& pool_plan(const Shape& xs, const Shape& ys, const PoolParams& p, const char* op) {
    SHOAL_ASSERT(xs.rank() == 4, op << ": pooling needs NCHW input, got " << xs.str());
    const Shape expected{xs[0], xs[1], window_output_size(xs[2], p.kernel, p.stride, p.pad),
                         window_output_size(xs[3], p.kernel, p.stride, p.pad)};
    SHOAL_ASSERT(ys == expected,
                 op << ": output " << ys.str() << " for x " << xs.str() << ", expected " << expected.str());
    const std::string key =
        make_key("pool", {xs[0], xs[1], xs[2], xs[3], static_cast<int>(p.kind), p.kernel, p.stride, p.pad});
    auto it = pools_.find(key);
    if (it != pools_.end()) return *it->second;
    auto plan = std::make_unique<PoolPlan>();
    plan->x = make_tensor_descriptor(xs, op);
    plan->y = make_tensor_descriptor(ys, op);
    cudnnPoolingDescriptor_t pooling = nullptr;
    SHOAL_CUDNN_CHECK(cudnnCreatePoolingDescriptor(&pooling));
    plan->pooling.reset(pooling);
    // Max: the deterministic variant (overlapping windows included). Average: padding is not
    // counted, as in the CPU backend. NaNs propagate, so a diverged step shows up.
    const cudnnPoolingMode_t mode =
        p.kind == PoolKind::max ? CUDNN_POOLING_MAX_DETERMINISTIC : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
    SHOAL_CUDNN_CHECK(cudnnSetPooling2dDescriptor(pooling, mode, CUDNN_PROPAGATE_NAN, p.kernel, p.kernel, p.pad, p.pad,
                                                  p.stride, p.stride));
    return *pools_.emplace(key, std::move(plan)).first->second;
  }

  NormPlan& norm_plan(const Shape& xs, const char* op) {
    const std::string key = make_key("bn", {xs[0], xs[1], xs.rank() == 4 ? xs[2] : 1, xs.rank() == 4 ? xs[3] : 1});
    auto it = norms_.find(key);
    if (it != norms_.end()) return *it->second;
    auto plan = std::make_unique<NormPlan>();
    plan->x = make_tensor_descriptor(xs, op);
    cudnnTensorDescriptor_t channels = nullptr;
    SHOAL_CUDNN_CHECK(cudnnCreateTensorDescriptor(&channels));
    plan->channels.reset(channels);
    SHOAL_CUDNN_CHECK(cudnnDeriveBNTensorDescriptor(channels, plan->x.get(), CUDNN_BATCHNORM_SPATIAL));
    return *norms_.emplace(key, std::move(plan)).first->second;
  }

  // Declaration order is teardown order reversed: the pools outlive the streams, the streams
  // outlive the handles and buffers that use them.
  const int index_;
  const Device device_;
  const bool tf32_;
  std::string describe_;
  std::shared_ptr<CachingAllocator> pool_;
  std::shared_ptr<CachingAllocator> pinned_;
  std::shared_ptr<EventPool> events_;
  Stream compute_;
  Stream copy_;
  Event compute_mark_;  // the copy stream waits on it: "after every op issued so far"
  Event sync_mark_;     // host waits on a stream
  std::shared_ptr<Storage> cublas_workspace_;
  std::shared_ptr<Storage> workspace_;     // convolutions
  std::shared_ptr<Storage> ones_;          // linear dbias
  std::shared_ptr<Storage> loss_rows_;     // softmax_cross_entropy per-row results
  std::shared_ptr<Storage> scalars_;       // DeviceScalars
  std::shared_ptr<Storage> partials_;      // kReductionBlocks doubles
  std::shared_ptr<Storage> host_scalars_;  // pinned DeviceScalars
  CudnnHandle cudnn_;
  CublasHandle cublas_;
  std::unordered_map<std::string, std::unique_ptr<ConvPlan>> convs_;
  std::unordered_map<std::string, std::unique_ptr<PoolPlan>> pools_;
  std::unordered_map<std::string, std::unique_ptr<NormPlan>> norms_;
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, bool tf32) {
  return std::make_unique<CudaBackend>(device, tf32);
}

}  // namespace shoal::cuda
