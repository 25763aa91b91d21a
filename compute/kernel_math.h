// The arithmetic of Shoal's own kernels, one element (or one row) at a time, as plain functions
// that compile for the host and, under nvcc, for the device. The CPU backend's loops and the
// CUDA backend's kernels both call them, so the CPU test suite checks the exact math every GPU
// kernel runs: the GPU adds only the launch (tests/compute/kernel_math_test.cc).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SHOAL_HD __host__ __device__ __forceinline__
#else
#define SHOAL_HD inline
#endif

namespace shoal::math {

// ---- counter-based random numbers (a value is a pure function of seed and index) -----------

SHOAL_HD std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

SHOAL_HD std::uint64_t hash_combine(std::uint64_t seed, std::uint64_t value) { return mix64(seed ^ mix64(value)); }

// Uniform in [0, 1) from the top 24 bits: exact in float, so host and device agree bit for bit.
SHOAL_HD float uniform_at(std::uint64_t seed, std::uint64_t index) {
  return static_cast<float>(hash_combine(seed, index) >> 40) * (1.0f / 16777216.0f);
}

// ---- dropout ----------------------------------------------------------------------------------

// 1 / (1 - p), or 0 when everything is dropped.
SHOAL_HD float dropout_keep_scale(float p) { return p < 1.f ? 1.f / (1.f - p) : 0.f; }

// The inverted-dropout multiplier of element `index`: keep_scale if kept, 0 if dropped.
SHOAL_HD float dropout_mask(std::uint64_t seed, std::uint64_t index, float p, float keep_scale) {
  return uniform_at(seed, index) >= p ? keep_scale : 0.f;
}

// ---- activations and element-wise -------------------------------------------------------------

SHOAL_HD float relu(float x) { return x > 0.f ? x : 0.f; }
// From the forward output y: the gradient passes where y > 0.
SHOAL_HD float relu_backward(float y, float dy) { return y > 0.f ? dy : 0.f; }

// NaN or infinity: the exponent bits are all ones.
SHOAL_HD bool non_finite_bits(std::uint32_t bits) { return (bits & 0x7f800000u) == 0x7f800000u; }

// ---- optimizers -------------------------------------------------------------------------------

struct SgdCoeffs {
  float lr = 0, momentum = 0, weight_decay = 0;
  bool nesterov = false;
};

// Plain SGD with L2 weight decay.
SHOAL_HD void sgd_step(float& w, float g, const SgdCoeffs& c) { w -= c.lr * (g + c.weight_decay * w); }

// Momentum SGD (PyTorch's form: v = mu v + d, w -= lr v), or Nesterov (w -= lr (d + mu v)).
SHOAL_HD void momentum_step(float& w, float g, float& v, const SgdCoeffs& c) {
  const float d = g + c.weight_decay * w;
  v = c.momentum * v + d;
  w -= c.lr * (c.nesterov ? d + c.momentum * v : v);
}

struct AdamCoeffs {
  float lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0;
  float step_size = 0;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2 = 0;  // 1 / sqrt(1 - beta2^t)
  bool decoupled = false;  // AdamW
};

// Bias corrections for update number `step` (1-based), computed once per call on the host.
inline AdamCoeffs adam_coeffs(float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled,
                              std::int64_t step) {
  AdamCoeffs c;
  c.lr = lr;
  c.beta1 = beta1;
  c.beta2 = beta2;
  c.eps = eps;
  c.weight_decay = weight_decay;
  c.decoupled = decoupled;
  const float bc1 = 1.f - static_cast<float>(std::pow(static_cast<double>(beta1), static_cast<double>(step)));
  const float bc2 = 1.f - static_cast<float>(std::pow(static_cast<double>(beta2), static_cast<double>(step)));
  c.step_size = lr / bc1;
  c.inv_sqrt_bc2 = 1.f / std::sqrt(bc2);
  return c;
}

// Adam (L2 decay added to the gradient) or AdamW (decay applied to the weight directly).
SHOAL_HD void adam_step(float& w, float g, float& m, float& v, const AdamCoeffs& c) {
  float gi = g;
  if (c.decoupled)
    w -= c.lr * c.weight_decay * w;
  else
    gi += c.weight_decay * w;
  m = c.beta1 * m + (1.f - c.beta1) * gi;
  v = c.beta2 * v + (1.f - c.beta2) * gi * gi;
  w -= c.step_size * m / (sqrtf(v) * c.inv_sqrt_bc2 + c.eps);
}

// ---- softmax cross-entropy, one row of logits --------------------------------------------------

struct RowLoss {
  double loss = 0;       // -log softmax(z)[label]
  bool correct = false;  // argmax == label (the first maximum wins ties)
};

// Loss and (when g is not null) g[j] = grad_scale * (softmax(z)[j] - [j == label]) for one
// row of k logits; label must be in [0, k).
SHOAL_HD RowLoss softmax_xent_row(const float* z, std::int64_t k, std::int32_t label, float grad_scale, float* g,
                                  float smoothing = 0) {
  std::int64_t best = 0;
  float max_z = z[0];
  for (std::int64_t j = 1; j < k; ++j)
    if (z[j] > max_z) max_z = z[j], best = j;
  double denom = 0;
  for (std::int64_t j = 0; j < k; ++j) denom += exp(static_cast<double>(z[j] - max_z));
  const double log_denom = log(denom);
  RowLoss r;
  r.loss = log_denom - static_cast<double>(z[label] - max_z);
  if (smoothing != 0) {  // -sum_j t_j log p_j = (1 - e) nll + e * mean_j(-log p_j)
    double mean_nll = 0;
    for (std::int64_t j = 0; j < k; ++j) mean_nll += log_denom - static_cast<double>(z[j] - max_z);
    r.loss = (1.0 - smoothing) * r.loss + smoothing * mean_nll / static_cast<double>(k);
  }
  r.correct = best == label;
  const double off = static_cast<double>(smoothing) / static_cast<double>(k), on = 1.0 - smoothing + off;
  if (g != nullptr)
    for (std::int64_t j = 0; j < k; ++j) {
      const double prob = exp(static_cast<double>(z[j] - max_z) - log_denom);
      g[j] = static_cast<float>(grad_scale * (prob - (j == label ? on : off)));
    }
  return r;
}

}  // namespace shoal::math
