// The CUDA backend's own kernels behind plain host launch functions: raw pointers, element
// counts, the hyper-parameter structs of compute/kernel_math.h and the stream to run on. Each
// kernel calls the per-element math of compute/kernel_math.h, so the CPU backend and the CPU
// test suite run exactly the arithmetic the GPU runs. Launches are asynchronous, allocate
// nothing and throw DeviceError if the launch itself fails.
//
// C++17 (nvcc); the host code that calls these (cuda_backend.cc) is C++20, so this header
// sees neither tensor.h nor backend.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "compute/kernel_math.h"

namespace shoal::cuda {

// ---- element-wise ------------------------------------------------------------------------------

void launch_fill(float* x, std::int64_t n, float value, cudaStream_t stream);
// y[r * cols + c] = row[c]: a bias broadcast over the rows of a row-major [rows, cols] matrix.
void launch_broadcast_rows(const float* row, float* y, std::int64_t rows, std::int64_t cols, cudaStream_t stream);
void launch_relu_forward(const float* x, float* y, std::int64_t n, cudaStream_t stream);
void launch_relu_backward(const float* y, const float* dy, float* dx, std::int64_t n, cudaStream_t stream);
// y[i] = min(max(x[i], lo), hi) (NaN stays NaN, as std::min/std::max on the CPU); dx[i] = dy[i]
// where lo < y[i] < hi, else 0. In place is fine: y may be x, dx may be y or dy.
void launch_clip_forward(const float* x, float* y, std::int64_t n, float lo, float hi, cudaStream_t stream);
void launch_clip_backward(const float* y, const float* dy, float* dx, std::int64_t n, float lo, float hi,
                          cudaStream_t stream);
// mask[i] = math::dropout_mask(seed, first_index + i, p, keep_scale), y[i] = x[i] * mask[i].
void launch_dropout_forward(const float* x, float* y, float* mask, std::int64_t n, float p, std::uint64_t seed,
                            std::uint64_t first_index, cudaStream_t stream);
void launch_multiply(const float* a, const float* b, float* out, std::int64_t n, cudaStream_t stream);
void launch_add(const float* a, const float* b, float* out, std::int64_t n, cudaStream_t stream);
void launch_axpy(float alpha, const float* x, float* y, std::int64_t n, cudaStream_t stream);
void launch_scale(float* x, float alpha, std::int64_t n, cudaStream_t stream);

// ---- optimizers ----------------------------------------------------------------------------------

// math::sgd_step when velocity is null, else math::momentum_step.
void launch_sgd(float* w, const float* g, float* velocity, std::int64_t n, const math::SgdCoeffs& c,
                cudaStream_t stream);
void launch_adam(float* w, const float* g, float* m, float* v, std::int64_t n, const math::AdamCoeffs& c,
                 cudaStream_t stream);

// ---- reductions to one value ---------------------------------------------------------------------
// Each writes its result into a DeviceScalars on the device; the caller copies it back. The
// partial sums go through fixed-size blocks in a fixed order, so results are deterministic.

struct LossTotals {
  double loss_sum;
  std::int64_t correct;
  std::int64_t first_bad_row;  // the first row whose label is outside [0, classes), or -1
  std::int32_t bad_label;      // that row's label
};

struct DeviceScalars {
  LossTotals loss;
  double sum_squares;
  std::uint32_t non_finite;  // non-zero if some element is NaN or infinite
};

constexpr int kReductionBlocks = 256;  // partial sums: `partials` holds this many doubles

void launch_sum_squares(const float* x, std::int64_t n, double* partials, DeviceScalars* out, cudaStream_t stream);
void launch_non_finite(const float* x, std::int64_t n, DeviceScalars* out, cudaStream_t stream);

// Softmax cross-entropy over rows of logits [rows, classes] via math::softmax_xent_row, one
// thread per row; dlogits (nullable) gets grad_scale * (softmax - t), t the one-hot target with
// label_smoothing applied (compute/backend.h). row_loss and row_status (scratch, `rows` entries
// each) hold per-row results that are then summed into out->loss. A row with a label outside
// [0, classes) contributes nothing and is reported.
void launch_softmax_cross_entropy(const float* logits, const std::int32_t* labels, std::int64_t rows,
                                  std::int64_t classes, float grad_scale, float label_smoothing, float* dlogits,
                                  double* row_loss, std::int32_t* row_status, DeviceScalars* out, cudaStream_t stream);

}  // namespace shoal::cuda
