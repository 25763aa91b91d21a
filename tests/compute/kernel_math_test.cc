// The per-element math of Shoal's own kernels (compute/kernel_math.h), checked on the CPU on every
// CI run: the CUDA kernels call these same functions, so only their launch is GPU-specific.
// References are written independently here, in double precision, in the textbook form.
#include "compute/kernel_math.h"
#include "compute/devices/devices.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "compute/backend.h"
#include "compute/rng.h"

namespace shoal {
namespace {

TEST(KernelMath, UniformIsAPureFunctionOfSeedAndIndexInTheUnitInterval) {
  // Golden values: dropout masks (and so training runs) must not change between releases or
  // between backends. If this fails, the random stream changed.
  EXPECT_EQ(math::hash_combine(1, 0), 627405149472732430ULL);
  EXPECT_EQ(math::hash_combine(1, 1), 16860738450190168606ULL);
  EXPECT_EQ(math::hash_combine(1, 3), 17027085370592858547ULL);
  EXPECT_EQ(math::uniform_at(1, 0), static_cast<float>(627405149472732430ULL >> 40) / 16777216.0f);
  for (std::uint64_t i = 0; i < 100000; ++i) {
    float u = math::uniform_at(42, i);
    ASSERT_GE(u, 0.f);
    ASSERT_LT(u, 1.f);
    ASSERT_EQ(u, math::uniform_at(42, i));
    // 24 bits: u * 2^24 is an integer, exactly representable.
    ASSERT_EQ(std::floor(u * 16777216.0f), u * 16777216.0f);
  }
  EXPECT_NE(math::uniform_at(1, 7), math::uniform_at(2, 7));
  EXPECT_NE(math::uniform_at(1, 7), math::uniform_at(1, 8));
}

TEST(KernelMath, DropoutKeepsOneMinusPOfTheElementsScaledByTheInverse) {
  const float p = 0.3f;
  const float keep = math::dropout_keep_scale(p);
  EXPECT_FLOAT_EQ(keep, 1.f / 0.7f);
  const int n = 200000;
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    float m = math::dropout_mask(9, static_cast<std::uint64_t>(i), p, keep);
    ASSERT_TRUE(m == 0.f || m == keep) << m;
    ASSERT_EQ(m != 0.f, math::uniform_at(9, static_cast<std::uint64_t>(i)) >= p);
    kept += m != 0.f;
  }
  // Binomial(n, 0.7): standard deviation ~205; 5 sigma.
  EXPECT_NEAR(kept, 0.7 * n, 1025);
  EXPECT_EQ(math::dropout_keep_scale(1.f), 0.f);
  EXPECT_EQ(math::dropout_mask(9, 3, 1.f, 0.f), 0.f);
  EXPECT_EQ(math::dropout_mask(9, 3, 0.f, 1.f), 1.f);
}

TEST(KernelMath, ReluAndItsGradient) {
  EXPECT_EQ(math::relu(-2.f), 0.f);
  EXPECT_EQ(math::relu(0.f), 0.f);
  EXPECT_EQ(math::relu(3.5f), 3.5f);
  EXPECT_EQ(math::relu_backward(0.f, 5.f), 0.f);
  EXPECT_EQ(math::relu_backward(1e-30f, 5.f), 5.f);
}

TEST(KernelMath, NonFiniteBitsAreExactlyNanAndInfinity) {
  auto bits = [](float f) { return std::bit_cast<std::uint32_t>(f); };
  EXPECT_TRUE(math::non_finite_bits(bits(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(math::non_finite_bits(bits(-std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(math::non_finite_bits(bits(std::numeric_limits<float>::infinity())));
  EXPECT_TRUE(math::non_finite_bits(bits(-std::numeric_limits<float>::infinity())));
  EXPECT_FALSE(math::non_finite_bits(bits(std::numeric_limits<float>::max())));
  EXPECT_FALSE(math::non_finite_bits(bits(std::numeric_limits<float>::denorm_min())));
  EXPECT_FALSE(math::non_finite_bits(bits(-0.f)));
}

// Several updates of one weight against the textbook recurrences in double.
TEST(KernelMath, SgdMomentumAndNesterovFollowTheirRecurrences) {
  const std::vector<double> grads{0.5, -1.25, 2.0, 0.125, -0.75};
  for (bool nesterov : {false, true}) {
    math::SgdCoeffs c{0.1f, 0.9f, 0.01f, nesterov};
    float w = 1.5f, v = 0.f;
    double rw = 1.5, rv = 0;
    for (double g : grads) {
      math::momentum_step(w, static_cast<float>(g), v, c);
      double d = g + 0.01 * rw;
      rv = 0.9 * rv + d;
      rw -= 0.1 * (nesterov ? d + 0.9 * rv : rv);
      EXPECT_NEAR(w, rw, 1e-6) << (nesterov ? "nesterov" : "momentum");
      EXPECT_NEAR(v, rv, 1e-6);
    }
  }
  float w = 2.f;
  math::sgd_step(w, 0.5f, math::SgdCoeffs{0.1f, 0.f, 0.1f, false});
  EXPECT_NEAR(w, 2.0 - 0.1 * (0.5 + 0.1 * 2.0), 1e-7);
}

TEST(KernelMath, AdamAndAdamWMatchTheBiasCorrectedTextbookForm) {
  const std::vector<double> grads{0.3, -0.1, 0.7, 0.02, -0.5, 0.9};
  const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.05;
  for (bool decoupled : {false, true}) {
    float w = 0.8f, m = 0.f, v = 0.f;
    double rw = 0.8, rm = 0, rv = 0;
    for (std::size_t t = 1; t <= grads.size(); ++t) {
      auto c =
          math::adam_coeffs(static_cast<float>(lr), static_cast<float>(b1), static_cast<float>(b2),
                            static_cast<float>(eps), static_cast<float>(wd), decoupled, static_cast<std::int64_t>(t));
      math::adam_step(w, static_cast<float>(grads[t - 1]), m, v, c);
      double g = grads[t - 1];
      if (decoupled)
        rw -= lr * wd * rw;
      else
        g += wd * rw;
      rm = b1 * rm + (1 - b1) * g;
      rv = b2 * rv + (1 - b2) * g * g;
      double mhat = rm / (1 - std::pow(b1, static_cast<double>(t)));
      double vhat = rv / (1 - std::pow(b2, static_cast<double>(t)));
      rw -= lr * mhat / (std::sqrt(vhat) + eps);
      EXPECT_NEAR(w, rw, 2e-6) << (decoupled ? "adamw" : "adam") << " step " << t;
    }
  }
}

TEST(KernelMath, SoftmaxCrossEntropyRowIsStableAndItsGradientIsSoftmaxMinusOneHot) {
  const std::vector<std::vector<float>> rows{
      {1.f, 2.f, 3.f, 0.5f}, {1000.f, -1000.f, 999.f, 0.f}, {-5.f, -5.f, -5.f, -5.f}};
  for (const auto& z : rows) {
    for (std::int32_t label = 0; label < 4; ++label) {
      double mx = *std::max_element(z.begin(), z.end()), denom = 0;
      for (float x : z) denom += std::exp(static_cast<double>(x) - mx);
      std::vector<float> g(4);
      math::RowLoss r = math::softmax_xent_row(z.data(), 4, label, 0.5f, g.data());
      EXPECT_NEAR(r.loss, std::log(denom) - (z[static_cast<std::size_t>(label)] - mx), 1e-9);
      ASSERT_TRUE(std::isfinite(r.loss));
      double total = 0;
      for (int j = 0; j < 4; ++j) {
        double p = std::exp(static_cast<double>(z[static_cast<std::size_t>(j)]) - mx) / denom;
        EXPECT_NEAR(g[static_cast<std::size_t>(j)], 0.5 * (p - (j == label)), 1e-7);
        total += g[static_cast<std::size_t>(j)];
      }
      EXPECT_NEAR(total, 0, 1e-6);
      // The first maximum wins ties (row 3: every logit equal, so only label 0 is "correct").
      std::size_t best = static_cast<std::size_t>(std::max_element(z.begin(), z.end()) - z.begin());
      EXPECT_EQ(r.correct, static_cast<std::size_t>(label) == best);
    }
  }
  math::RowLoss no_grad = math::softmax_xent_row(rows[0].data(), 4, 2, 1.f, nullptr);
  EXPECT_TRUE(no_grad.correct);
}

// The CPU backend's loops call the same functions: its results are bit-identical to them.
TEST(KernelMath, CpuBackendRunsExactlyTheseFunctions) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  const std::int64_t n = 1000;
  Tensor w = Tensor::zeros({n}), g = Tensor::zeros({n}), v = Tensor::zeros({n}), m = Tensor::zeros({n}),
         s = Tensor::zeros({n});
  Rng rng(3);
  for (std::int64_t i = 0; i < n; ++i) {
    w.data<float>()[i] = static_cast<float>(rng.normal());
    g.data<float>()[i] = static_cast<float>(rng.normal());
  }
  std::vector<float> ew(w.data<float>(), w.data<float>() + n), ev(static_cast<std::size_t>(n)),
      em(static_cast<std::size_t>(n)), es(static_cast<std::size_t>(n));
  SgdHyper sh{0.05f, 0.9f, true, 1e-4f};
  backend->sgd_update(w, g, &v, sh);
  math::SgdCoeffs sc{sh.lr, sh.momentum, sh.weight_decay, sh.nesterov};
  for (std::int64_t i = 0; i < n; ++i) {
    auto k = static_cast<std::size_t>(i);
    math::momentum_step(ew[k], g.data<float>()[i], ev[k], sc);
    ASSERT_EQ(w.data<float>()[i], ew[k]) << i;
  }
  AdamHyper ah;
  ah.lr = 0.003f;
  ah.weight_decay = 0.01f;
  ah.decoupled = true;
  ah.step = 4;
  backend->adam_update(w, g, m, s, ah);
  auto ac = math::adam_coeffs(ah.lr, ah.beta1, ah.beta2, ah.eps, ah.weight_decay, ah.decoupled, ah.step);
  for (std::int64_t i = 0; i < n; ++i) {
    auto k = static_cast<std::size_t>(i);
    math::adam_step(ew[k], g.data<float>()[i], em[k], es[k], ac);
    ASSERT_EQ(w.data<float>()[i], ew[k]) << i;
  }
  Tensor y = Tensor::zeros({n}), mask;
  backend->dropout_forward(g, y, mask, 0.4f, 77, 5000);
  for (std::int64_t i = 0; i < n; ++i)
    ASSERT_EQ(mask.data<float>()[i],
              math::dropout_mask(77, 5000 + static_cast<std::uint64_t>(i), 0.4f, math::dropout_keep_scale(0.4f)));
}

// Opaque outputs the backend allocates on first use (dropout mask, batch-norm statistics,
// pooling workspace) are allocated for one element too: a default Tensor has shape [] and
// numel 1, but no memory, and was once taken as already allocated.
TEST(CpuBackend, AllocatesOpaqueOutputsOfOneElement) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  Tensor x = Tensor::zeros({1}), y = Tensor::zeros({1}), mask;
  x.data<float>()[0] = 2.f;
  backend->dropout_forward(x, y, mask, 0.f, 1);
  ASSERT_NE(mask.raw(), nullptr);
  EXPECT_EQ(y.data<float>()[0], 2.f);

  Tensor bx = Tensor::zeros({2, 1}), by = Tensor::zeros({2, 1}), gamma = Tensor::zeros({1}), beta = Tensor::zeros({1});
  Tensor rm = Tensor::zeros({1}), rv = Tensor::zeros({1}), sm, sv;
  bx.data<float>()[0] = 1.f;
  bx.data<float>()[1] = 3.f;
  gamma.data<float>()[0] = 1.f;
  backend->batch_norm_forward_training(bx, gamma, beta, by, rm, rv, sm, sv, 0.1f, 1e-5f);
  ASSERT_NE(sm.raw(), nullptr);
  ASSERT_NE(sv.raw(), nullptr);
  EXPECT_NEAR(by.data<float>()[0], -1.f, 1e-3);

  Tensor px = Tensor::zeros({1, 1, 2, 2}), py = Tensor::zeros({1, 1, 1, 1}), ws;
  px.data<float>()[3] = 5.f;
  backend->pool_forward(px, py, ws, PoolParams{}, true);
  EXPECT_EQ(py.data<float>()[0], 5.f);
}

}  // namespace
}  // namespace shoal
