// Shoal's CUDA kernels: grid-stride loops over the per-element math of compute/kernel_math.h, and
// deterministic reductions (fixed block counts, fixed combining order). Compiled with
// --fmad=false (compute/cuda/CMakeLists.txt) so that a*b+c is not fused: the element-wise results are
// then bit-identical to the CPU backend's, which runs the same functions without FMA.
#include <algorithm>

#include "compute/cuda/check.h"
#include "compute/cuda/kernels.h"

namespace shoal::cuda {
namespace {

constexpr int kThreads = 256;              // per block, for every kernel but the loss rows
constexpr int kRowThreads = 64;            // loss: one thread per row, few rows per block
constexpr std::int64_t kMaxBlocks = 8192;  // grid-stride beyond this
constexpr int kWarp = 32;

int blocks_for(std::int64_t n, int threads = kThreads) {
  return static_cast<int>(std::min<std::int64_t>((n + threads - 1) / threads, kMaxBlocks));
}

void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

__device__ __forceinline__ std::int64_t thread_index() {
  return static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ std::int64_t grid_stride() { return static_cast<std::int64_t>(gridDim.x) * blockDim.x; }

// Every element i < n, each thread taking every (grid size)-th one from its own index.
#define SHOAL_GRID_STRIDE(i, n) for (std::int64_t i = thread_index(); i < (n); i += grid_stride())

// ---- element-wise ------------------------------------------------------------------------------

__global__ void fill_kernel(float* x, std::int64_t n, float value) { SHOAL_GRID_STRIDE(i, n) x[i] = value; }

__global__ void broadcast_rows_kernel(const float* row, float* y, std::int64_t n, std::int64_t cols) {
  SHOAL_GRID_STRIDE(i, n) y[i] = row[i % cols];
}

__global__ void relu_forward_kernel(const float* x, float* y, std::int64_t n) {
  SHOAL_GRID_STRIDE(i, n) y[i] = math::relu(x[i]);
}

__global__ void relu_backward_kernel(const float* y, const float* dy, float* dx, std::int64_t n) {
  SHOAL_GRID_STRIDE(i, n) dx[i] = math::relu_backward(y[i], dy[i]);
}

// The CPU backend's std::min(std::max(x, lo), hi), spelled out: fminf/fmaxf would turn a NaN
// into lo, where std::max keeps it (so a diverged step still shows up).
__global__ void clip_forward_kernel(const float* x, float* y, std::int64_t n, float lo, float hi) {
  SHOAL_GRID_STRIDE(i, n) {
    const float xi = x[i];
    const float above = xi < lo ? lo : xi;  // std::max(xi, lo)
    y[i] = hi < above ? hi : above;         // std::min(above, hi)
  }
}

__global__ void clip_backward_kernel(const float* y, const float* dy, float* dx, std::int64_t n, float lo, float hi) {
  SHOAL_GRID_STRIDE(i, n) {
    const float yi = y[i];
    dx[i] = yi > lo && yi < hi ? dy[i] : 0.f;
  }
}

__global__ void dropout_forward_kernel(const float* x, float* y, float* mask, std::int64_t n, float p, float keep_scale,
                                       std::uint64_t seed, std::uint64_t first_index) {
  SHOAL_GRID_STRIDE(i, n) {
    const float xi = x[i];  // before the stores: y may be x
    const float m = math::dropout_mask(seed, first_index + static_cast<std::uint64_t>(i), p, keep_scale);
    mask[i] = m;
    y[i] = xi * m;
  }
}

__global__ void multiply_kernel(const float* a, const float* b, float* out, std::int64_t n) {
  SHOAL_GRID_STRIDE(i, n) out[i] = a[i] * b[i];
}

__global__ void add_kernel(const float* a, const float* b, float* out, std::int64_t n) {
  SHOAL_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}

__global__ void axpy_kernel(float alpha, const float* x, float* y, std::int64_t n) {
  SHOAL_GRID_STRIDE(i, n) y[i] += alpha * x[i];
}

__global__ void scale_kernel(float* x, float alpha, std::int64_t n) { SHOAL_GRID_STRIDE(i, n) x[i] *= alpha; }

// ---- optimizers ----------------------------------------------------------------------------------

__global__ void sgd_kernel(float* w, const float* g, std::int64_t n, math::SgdCoeffs c) {
  SHOAL_GRID_STRIDE(i, n) {
    float wi = w[i];
    math::sgd_step(wi, g[i], c);
    w[i] = wi;
  }
}

__global__ void momentum_kernel(float* w, const float* g, float* v, std::int64_t n, math::SgdCoeffs c) {
  SHOAL_GRID_STRIDE(i, n) {
    float wi = w[i];
    float vi = v[i];
    math::momentum_step(wi, g[i], vi, c);
    w[i] = wi;
    v[i] = vi;
  }
}

__global__ void adam_kernel(float* w, const float* g, float* m, float* v, std::int64_t n, math::AdamCoeffs c) {
  SHOAL_GRID_STRIDE(i, n) {
    float wi = w[i];
    float mi = m[i];
    float vi = v[i];
    math::adam_step(wi, g[i], mi, vi, c);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
  }
}

// ---- reductions ------------------------------------------------------------------------------------

struct Sum {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct Min {
  template <typename T>
  __device__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

// Combines one value per thread of a block of blockDim.x (a multiple of 32, at most 1024)
// threads; the result is valid in thread 0. The order is fixed, so the result is too.
template <typename T, typename Combine>
__device__ T block_reduce(T value, Combine combine, T identity) {
  __shared__ T warp_totals[kWarp];
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    value = combine(value, __shfl_down_sync(0xffffffffu, value, offset));
  __syncthreads();  // an earlier block_reduce of this type may still be reading warp_totals
  if (lane == 0) warp_totals[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < static_cast<int>(blockDim.x / kWarp) ? warp_totals[lane] : identity;
    for (int offset = kWarp / 2; offset > 0; offset /= 2)
      value = combine(value, __shfl_down_sync(0xffffffffu, value, offset));
  }
  return value;
}

__global__ void sum_squares_partials_kernel(const float* x, std::int64_t n, double* partials) {
  double total = 0;
  SHOAL_GRID_STRIDE(i, n) {
    const double v = x[i];
    total += v * v;
  }
  total = block_reduce(total, Sum{}, 0.0);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void sum_partials_kernel(const double* partials, int count, DeviceScalars* out) {
  double total = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) total += partials[i];
  total = block_reduce(total, Sum{}, 0.0);
  if (threadIdx.x == 0) out->sum_squares = total;
}

__global__ void non_finite_kernel(const float* x, std::int64_t n, DeviceScalars* out) {
  std::uint32_t bad = 0;
  SHOAL_GRID_STRIDE(i, n) bad |= static_cast<std::uint32_t>(math::non_finite_bits(__float_as_uint(x[i])));
  if (__syncthreads_or(bad) && threadIdx.x == 0) out->non_finite = 1;
}

constexpr std::int32_t kRowWrong = 0;
constexpr std::int32_t kRowCorrect = 1;
constexpr std::int32_t kRowBadLabel = 2;

__global__ void softmax_xent_rows_kernel(const float* logits, const std::int32_t* labels, std::int64_t rows,
                                         std::int64_t classes, float grad_scale, float label_smoothing, float* dlogits,
                                         double* row_loss, std::int32_t* row_status) {
  SHOAL_GRID_STRIDE(r, rows) {
    const std::int32_t label = labels[r];
    if (label < 0 || label >= classes) {
      row_loss[r] = 0;
      row_status[r] = kRowBadLabel;
      continue;
    }
    const math::RowLoss result =
        math::softmax_xent_row(logits + r * classes, classes, label, grad_scale,
                               dlogits != nullptr ? dlogits + r * classes : nullptr, label_smoothing);
    row_loss[r] = result.loss;
    row_status[r] = result.correct ? kRowCorrect : kRowWrong;
  }
}

__global__ void loss_totals_kernel(const double* row_loss, const std::int32_t* row_status, const std::int32_t* labels,
                                   std::int64_t rows, DeviceScalars* out) {
  double loss = 0;
  std::int64_t correct = 0;
  std::int64_t first_bad = rows;  // none
  for (std::int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    loss += row_loss[r];
    correct += row_status[r] == kRowCorrect ? 1 : 0;
    if (row_status[r] == kRowBadLabel && first_bad == rows) first_bad = r;
  }
  loss = block_reduce(loss, Sum{}, 0.0);
  correct = block_reduce(correct, Sum{}, std::int64_t{0});
  first_bad = block_reduce(first_bad, Min{}, rows);
  if (threadIdx.x == 0) {
    out->loss.loss_sum = loss;
    out->loss.correct = correct;
    out->loss.first_bad_row = first_bad < rows ? first_bad : -1;
    out->loss.bad_label = first_bad < rows ? labels[first_bad] : 0;
  }
}

#undef SHOAL_GRID_STRIDE

}  // namespace

// ---- launchers -----------------------------------------------------------------------------------

void launch_fill(float* x, std::int64_t n, float value, cudaStream_t stream) {
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, value);
  check_launch("fill_kernel<<<>>>");
}

void launch_broadcast_rows(const float* row, float* y, std::int64_t rows, std::int64_t cols, cudaStream_t stream) {
  const std::int64_t n = rows * cols;
  if (n <= 0) return;
  broadcast_rows_kernel<<<blocks_for(n), kThreads, 0, stream>>>(row, y, n, cols);
  check_launch("broadcast_rows_kernel<<<>>>");
}

void launch_relu_forward(const float* x, float* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  relu_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n);
  check_launch("relu_forward_kernel<<<>>>");
}

void launch_relu_backward(const float* y, const float* dy, float* dx, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  relu_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(y, dy, dx, n);
  check_launch("relu_backward_kernel<<<>>>");
}

void launch_clip_forward(const float* x, float* y, std::int64_t n, float lo, float hi, cudaStream_t stream) {
  if (n <= 0) return;
  clip_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n, lo, hi);
  check_launch("clip_forward_kernel<<<>>>");
}

void launch_clip_backward(const float* y, const float* dy, float* dx, std::int64_t n, float lo, float hi,
                          cudaStream_t stream) {
  if (n <= 0) return;
  clip_backward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(y, dy, dx, n, lo, hi);
  check_launch("clip_backward_kernel<<<>>>");
}

void launch_dropout_forward(const float* x, float* y, float* mask, std::int64_t n, float p, std::uint64_t seed,
                            std::uint64_t first_index, cudaStream_t stream) {
  if (n <= 0) return;
  dropout_forward_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, mask, n, p, math::dropout_keep_scale(p), seed,
                                                                 first_index);
  check_launch("dropout_forward_kernel<<<>>>");
}

void launch_multiply(const float* a, const float* b, float* out, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  multiply_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, out, n);
  check_launch("multiply_kernel<<<>>>");
}

void launch_add(const float* a, const float* b, float* out, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  add_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, out, n);
  check_launch("add_kernel<<<>>>");
}

void launch_axpy(float alpha, const float* x, float* y, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  axpy_kernel<<<blocks_for(n), kThreads, 0, stream>>>(alpha, x, y, n);
  check_launch("axpy_kernel<<<>>>");
}

void launch_scale(float* x, float alpha, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, alpha, n);
  check_launch("scale_kernel<<<>>>");
}

void launch_sgd(float* w, const float* g, float* velocity, std::int64_t n, const math::SgdCoeffs& c,
                cudaStream_t stream) {
  if (n <= 0) return;
  if (velocity == nullptr) {
    sgd_kernel<<<blocks_for(n), kThreads, 0, stream>>>(w, g, n, c);
    check_launch("sgd_kernel<<<>>>");
  } else {
    momentum_kernel<<<blocks_for(n), kThreads, 0, stream>>>(w, g, velocity, n, c);
    check_launch("momentum_kernel<<<>>>");
  }
}

void launch_adam(float* w, const float* g, float* m, float* v, std::int64_t n, const math::AdamCoeffs& c,
                 cudaStream_t stream) {
  if (n <= 0) return;
  adam_kernel<<<blocks_for(n), kThreads, 0, stream>>>(w, g, m, v, n, c);
  check_launch("adam_kernel<<<>>>");
}

void launch_sum_squares(const float* x, std::int64_t n, double* partials, DeviceScalars* out, cudaStream_t stream) {
  const int blocks = std::max(1, std::min(blocks_for(n), kReductionBlocks));
  sum_squares_partials_kernel<<<blocks, kThreads, 0, stream>>>(x, n, partials);
  check_launch("sum_squares_partials_kernel<<<>>>");
  sum_partials_kernel<<<1, kThreads, 0, stream>>>(partials, blocks, out);
  check_launch("sum_partials_kernel<<<>>>");
}

void launch_non_finite(const float* x, std::int64_t n, DeviceScalars* out, cudaStream_t stream) {
  SHOAL_CUDA_CHECK(cudaMemsetAsync(&out->non_finite, 0, sizeof(out->non_finite), stream));
  if (n <= 0) return;
  non_finite_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, out);
  check_launch("non_finite_kernel<<<>>>");
}

void launch_softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t rows,
                                  std::int64_t classes, float grad_scale, float label_smoothing, float* dlogits,
                                  double* row_loss, std::int32_t* row_status, DeviceScalars* out, cudaStream_t stream) {
  if (rows > 0) {
    softmax_xent_rows_kernel<<<blocks_for(rows, kRowThreads), kRowThreads, 0, stream>>>(
        logits, labels, rows, classes, grad_scale, label_smoothing, dlogits, row_loss, row_status);
    check_launch("softmax_xent_rows_kernel<<<>>>");
  }
  loss_totals_kernel<<<1, kThreads, 0, stream>>>(row_loss, row_status, labels, rows, out);
  check_launch("loss_totals_kernel<<<>>>");
}

}  // namespace shoal::cuda
