// Finite-difference gradient checks for every layer on the CPU backend, plus forward results
// against naive reference loops. L = sum(y * r) for a fixed random r, so dL/dy = r.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "compute/backend.h"
#include "compute/devices/devices.h"
#include "base/error.h"
#include "compute/rng.h"
#include "models/layer.h"
#include "models/model.h"
#include "models/model_file.h"
#include "tests/support/host_copy.h"

namespace shoal {
namespace {

using testing::to_host;

enum class InputKind { normal, separated };

Tensor random_tensor(Backend& b, const Shape& s, Rng& rng, InputKind kind) {
  std::vector<float> host(static_cast<std::size_t>(s.numel()));
  if (kind == InputKind::normal) {
    for (auto& v : host) v = static_cast<float>(rng.normal());
  } else {
    // Distinct values at least 0.05 apart and away from 0, so max and relu have no ties or
    // kinks within the finite-difference step.
    std::vector<std::size_t> order(host.size());
    std::iota(order.begin(), order.end(), 0);
    for (std::size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
    for (std::size_t i = 0; i < host.size(); ++i) {
      float v = 0.05f * static_cast<float>(order[i]) - 0.025f * static_cast<float>(host.size());
      host[i] = v >= 0 ? v + 0.1f : v - 0.1f;
    }
  }
  Tensor t = b.allocate(s);
  b.copy_from_host(host.data(), t);
  return t;
}

double projected(Backend& b, const Tensor& y, const std::vector<float>& r) {
  auto host = to_host(b, y);
  double sum = 0;
  for (std::size_t i = 0; i < host.size(); ++i) sum += static_cast<double>(host[i]) * r[i];
  return sum;
}

struct CheckOptions {
  InputKind input = InputKind::normal;
  double h = 1e-2;
  double rtol = 2e-2;
  double atol = 2e-3;
  int samples = 24;  // elements checked per tensor
  // Sync batch norm in a world of one rank (the sum across ranks is the identity): its own
  // forward and backward, which must be those of the plain layer.
  bool sync_world_of_one = false;
};

// Compares analytic and central-difference gradients of L = sum(layer(x) * r) for x and every
// parameter of the layer.
void check_layer(Layer& layer, const Shape& input_shape, const CheckOptions& opt = {}) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  ParameterSet set;
  layer.declare(set, "l.");
  set.allocate(b, 7);
  Rng rng(42);
  // Random parameters (not the init), so batch norm's gamma/beta and biases matter.
  for (const auto& p : set.parameters()) {
    Tensor r = random_tensor(b, p->shape, rng, InputKind::normal);
    b.scale(r, 0.5f);
    b.copy(r, p->value);
  }
  Tensor x = random_tensor(b, input_shape, rng, opt.input);
  LayerContext ctx{b, true, 1234};
  int sums = 0;
  if (opt.sync_world_of_one) ctx.sum_across_ranks = [&sums](std::span<float>) { ++sums; };
  Shape out_shape = layer.output_shape(input_shape);
  std::vector<float> r(static_cast<std::size_t>(out_shape.numel()));
  for (auto& v : r) v = static_cast<float>(rng.normal());
  Tensor dy = b.allocate(out_shape);
  b.copy_from_host(r.data(), dy);

  const Tensor& y0 = layer.forward(ctx, x);
  ASSERT_EQ(y0.shape(), out_shape) << layer.describe();
  const Tensor& dx = layer.backward(ctx, dy, true);
  auto dx_host = to_host(b, dx);
  std::vector<std::vector<float>> dparams;
  for (const auto& p : set.parameters()) dparams.push_back(to_host(b, p->grad));

  auto check_tensor = [&](Tensor& t, const std::vector<float>& analytic, const std::string& what) {
    std::vector<float> host = to_host(b, t);
    std::int64_t n = t.numel();
    int failures = 0;
    for (int s = 0; s < std::min<std::int64_t>(opt.samples, n); ++s) {
      std::size_t i = n <= opt.samples ? static_cast<std::size_t>(s) : static_cast<std::size_t>(rng.below(n));
      float original = host[i];
      host[i] = original + static_cast<float>(opt.h);
      b.copy_from_host(host.data(), t);
      double plus = projected(b, layer.forward(ctx, x), r);
      host[i] = original - static_cast<float>(opt.h);
      b.copy_from_host(host.data(), t);
      double minus = projected(b, layer.forward(ctx, x), r);
      host[i] = original;
      b.copy_from_host(host.data(), t);
      double numeric = (plus - minus) / (2 * opt.h);
      double a = analytic[i];
      double tol = opt.atol + opt.rtol * std::max(std::abs(numeric), std::abs(a));
      if (std::abs(numeric - a) > tol && ++failures <= 3)
        ADD_FAILURE() << layer.describe() << ": d/d " << what << "[" << i << "] analytic " << a << " numeric "
                      << numeric;
    }
  };
  if (opt.sync_world_of_one) EXPECT_GT(sums, 0) << "the synchronised path was not taken";
  check_tensor(x, dx_host, "input");
  for (std::size_t k = 0; k < set.parameters().size(); ++k)
    check_tensor(set.parameters()[k]->value, dparams[k], set.parameters()[k]->name);
}

TEST(GradientCheck, Conv2dWithBiasPadded) {
  auto l = conv2d(3, 4, 3, 1, 1);
  check_layer(*l, Shape{2, 3, 6, 6});
}
TEST(GradientCheck, Conv2dStridedNoBias) {
  auto l = conv2d(2, 5, 3, 2, 0, false);
  check_layer(*l, Shape{3, 2, 7, 7});
}
TEST(GradientCheck, Conv2dPointwise) {
  auto l = conv2d(4, 3, 1, 2, 0, false);
  check_layer(*l, Shape{2, 4, 6, 6});
}
TEST(GradientCheck, Linear) {
  auto l = linear(12, 7);
  check_layer(*l, Shape{5, 12});
}
TEST(GradientCheck, LinearOnImageInput) {
  auto l = linear(2 * 3 * 3, 4);
  check_layer(*l, Shape{3, 2, 3, 3});
}
TEST(GradientCheck, Relu) {
  auto l = relu();
  check_layer(*l, Shape{4, 3, 5, 5}, CheckOptions{InputKind::separated});
}
TEST(GradientCheck, MaxPool) {
  auto l = max_pool(2, 2);
  check_layer(*l, Shape{2, 3, 6, 6}, CheckOptions{InputKind::separated});
}
TEST(GradientCheck, GlobalAveragePool) {
  auto l = global_avg_pool();
  check_layer(*l, Shape{2, 3, 4, 4});
}
TEST(GradientCheck, BatchNormImage) {
  auto l = batch_norm(3);
  check_layer(*l, Shape{4, 3, 3, 3});
}
TEST(GradientCheck, BatchNormVector) {
  auto l = batch_norm(6);
  check_layer(*l, Shape{8, 6});
}

TEST(GradientCheck, SyncBatchNormImage) {
  auto l = batch_norm(3);
  CheckOptions o;
  o.sync_world_of_one = true;
  check_layer(*l, Shape{4, 3, 5, 5}, o);
}

// Synchronised batch norm in a world of one gives what the backend's batch norm gives: output,
// input gradient, parameter gradients and running statistics.
TEST(SyncBatchNorm, WorldOfOneMatchesTheBackend) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  auto run = [&](bool sync, std::vector<std::vector<float>>& out) {
    auto layer = batch_norm(4);
    ParameterSet set;
    layer->declare(set, "bn.");
    set.allocate(b, 3);
    Rng rng(9);
    for (const auto& p : set.parameters()) b.copy(random_tensor(b, p->shape, rng, InputKind::normal), p->value);
    Tensor x = random_tensor(b, Shape{6, 4, 3, 3}, rng, InputKind::normal);
    Tensor dy = random_tensor(b, Shape{6, 4, 3, 3}, rng, InputKind::normal);
    LayerContext ctx{b, true, 1};
    if (sync) ctx.sum_across_ranks = [](std::span<float>) {};
    out.push_back(to_host(b, layer->forward(ctx, x)));
    out.push_back(to_host(b, layer->backward(ctx, dy, true)));
    for (const auto& p : set.parameters()) out.push_back(to_host(b, p->grad));
    for (const auto& p : set.buffers()) out.push_back(to_host(b, p->value));
  };
  std::vector<std::vector<float>> plain, synced;
  run(false, plain);
  run(true, synced);
  ASSERT_EQ(plain.size(), synced.size());
  for (std::size_t k = 0; k < plain.size(); ++k) {
    ASSERT_EQ(plain[k].size(), synced[k].size());
    for (std::size_t i = 0; i < plain[k].size(); ++i)
      ASSERT_NEAR(plain[k][i], synced[k][i], 2e-5 + 2e-5 * std::abs(plain[k][i])) << "tensor " << k << " element " << i;
  }
}
TEST(GradientCheck, Dropout) {
  auto l = dropout(0.4f, 9);
  check_layer(*l, Shape{4, 50});
}
TEST(GradientCheck, Flatten) {
  auto l = flatten();
  check_layer(*l, Shape{2, 3, 2, 2});
}
TEST(GradientCheck, GroupedConvolution) {
  ConvSpec c;
  c.in = 4, c.out = 6, c.kernel = 3, c.stride = 1, c.pad = 1, c.groups = 2;
  auto l = conv2d(c);
  check_layer(*l, Shape{2, 4, 5, 5});
}
TEST(GradientCheck, DepthwiseConvolutionStridedNoBias) {
  ConvSpec c;
  c.in = 5, c.out = 5, c.kernel = 3, c.stride = 2, c.pad = 1, c.groups = 5, c.bias = false;
  auto l = conv2d(c);
  check_layer(*l, Shape{3, 5, 7, 7});
}
TEST(GradientCheck, Relu6) {
  // Inputs 0.05 apart around 0 and 6 (none within the step of a kink).
  auto l = clip(0.f, 6.f);
  check_layer(*l, Shape{2, 3, 5, 5}, CheckOptions{InputKind::separated, 1e-2, 2e-2, 2e-3});
  auto wide = clip(-1.02f, 1.02f);  // kinks 0.02 from the nearest input
  check_layer(*wide, Shape{4, 30}, CheckOptions{InputKind::separated, 1e-2, 2e-2, 2e-3});
}
TEST(GradientCheck, MaxPool3x3Stride2Padded) {
  auto l = max_pool(3, 2, 1);
  check_layer(*l, Shape{2, 3, 7, 7}, CheckOptions{InputKind::separated, 1e-2, 2e-2, 2e-3});
}
TEST(GradientCheck, AveragePool3x3Stride1Padded) {
  auto l = avg_pool(3, 1, 1);
  check_layer(*l, Shape{2, 2, 5, 5});
}
TEST(GradientCheck, Identity) {
  auto l = identity();
  check_layer(*l, Shape{3, 7});
}

TEST(GradientCheck, SoftmaxCrossEntropy) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  Rng rng(3);
  const int n = 5, k = 7;
  std::vector<float> z(n * k);
  for (auto& v : z) v = static_cast<float>(2 * rng.normal());
  std::vector<std::int32_t> labels{0, 3, 6, 2, 3};
  Tensor logits = backend->allocate(Shape{n, k}), y = backend->allocate(Shape{n}, DType::i32);
  Tensor grad = backend->allocate(Shape{n, k});
  backend->copy_from_host(labels.data(), y);
  backend->copy_from_host(z.data(), logits);
  LossStats base = backend->softmax_cross_entropy(logits, y, &grad, 1.f / n);
  // Reference loss in double.
  double ref = 0;
  for (int i = 0; i < n; ++i) {
    double m = *std::max_element(&z[i * k], &z[i * k] + k), s = 0;
    for (int j = 0; j < k; ++j) s += std::exp(z[i * k + j] - m);
    ref += std::log(s) + m - z[i * k + labels[i]];
  }
  EXPECT_NEAR(base.loss_sum, ref, 1e-4);
  auto g = to_host(*backend, grad);
  const double h = 1e-3;
  for (int idx = 0; idx < n * k; ++idx) {
    float saved = z[idx];
    z[idx] = saved + h;
    backend->copy_from_host(z.data(), logits);
    double plus = backend->softmax_cross_entropy(logits, y, nullptr, 1).loss_sum / n;
    z[idx] = saved - h;
    backend->copy_from_host(z.data(), logits);
    double minus = backend->softmax_cross_entropy(logits, y, nullptr, 1).loss_sum / n;
    z[idx] = saved;
    EXPECT_NEAR(g[idx], (plus - minus) / (2 * h), 2e-3) << "logit " << idx;
  }
}

// A whole model end to end: gradients of the mean loss with respect to sampled parameters.
TEST(GradientCheck, WholeCnnBnModel) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  auto model = build_model("cnn_bn", Shape{1, 8, 8}, 10);
  model->build(b, 5);
  Rng rng(11);
  Tensor x = random_tensor(b, Shape{6, 1, 8, 8}, rng, InputKind::normal);
  std::vector<std::int32_t> labels{1, 4, 9, 0, 4, 7};
  Tensor y = b.allocate(Shape{6}, DType::i32);
  b.copy_from_host(labels.data(), y);
  LayerContext ctx{b, true, 99};
  const Tensor& logits = model->forward(ctx, x);
  Tensor dlogits = b.allocate(logits.shape());
  b.softmax_cross_entropy(logits, y, &dlogits, 1.f / 6);
  std::vector<Parameter*> reported;
  model->backward(ctx, dlogits,
                  [&](const std::vector<Parameter*>& ps) { reported.insert(reported.end(), ps.begin(), ps.end()); });
  EXPECT_EQ(reported.size(), model->params().parameters().size()) << "every parameter is reported ready once";
  EXPECT_EQ(reported.front()->name, "fc2.weight") << "gradients are reported from the last layer back";
  auto grads = to_host(b, model->params().grads());
  auto values = to_host(b, model->params().values());
  auto loss = [&]() {
    b.copy_from_host(values.data(), model->params().values());
    return b.softmax_cross_entropy(model->forward(ctx, x), y, nullptr, 1).loss_sum / 6;
  };
  // A small step: with batch statistics over few samples, many ReLU/max-pool inputs sit near a
  // kink, and a larger step crosses them.
  const double h = 1e-3;
  int failures = 0;
  for (int s = 0; s < 40; ++s) {
    auto i = static_cast<std::size_t>(rng.below(values.size()));
    float saved = values[i];
    values[i] = saved + static_cast<float>(h);
    double plus = loss();
    values[i] = saved - static_cast<float>(h);
    double minus = loss();
    values[i] = saved;
    double numeric = (plus - minus) / (2 * h);
    if (std::abs(numeric - grads[i]) > 1e-3 + 5e-2 * std::abs(numeric) && ++failures <= 3)
      ADD_FAILURE() << "parameter element " << i << ": analytic " << grads[i] << " numeric " << numeric;
  }
  EXPECT_EQ(failures, 0);
}

// ---- forward results against naive loops ------------------------------------------------

TEST(ForwardReference, Conv2dMatchesDirectLoop) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  Rng rng(1);
  const int n = 2, c = 3, h = 7, k = 5, r = 3, stride = 2, pad = 1;
  Tensor x = random_tensor(b, Shape{n, c, h, h}, rng, InputKind::normal);
  Tensor w = random_tensor(b, Shape{k, c, r, r}, rng, InputKind::normal);
  Tensor bias = random_tensor(b, Shape{k}, rng, InputKind::normal);
  const int p = static_cast<int>(window_output_size(h, r, stride, pad));
  Tensor y = b.allocate(Shape{n, k, p, p});
  b.conv2d_forward(x, w, &bias, y, Conv2dParams{stride, pad});
  auto xs = to_host(b, x), ws = to_host(b, w), bs = to_host(b, bias), ys = to_host(b, y);
  for (int i = 0; i < n; ++i)
    for (int o = 0; o < k; ++o)
      for (int oy = 0; oy < p; ++oy)
        for (int ox = 0; ox < p; ++ox) {
          double sum = bs[o];
          for (int ci = 0; ci < c; ++ci)
            for (int ky = 0; ky < r; ++ky)
              for (int kx = 0; kx < r; ++kx) {
                int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy < 0 || ix < 0 || iy >= h || ix >= h) continue;
                sum += xs[((i * c + ci) * h + iy) * h + ix] * ws[((o * c + ci) * r + ky) * r + kx];
              }
          ASSERT_NEAR(ys[((i * k + o) * p + oy) * p + ox], sum, 1e-4);
        }
}

TEST(ForwardReference, LinearMaxPoolAndBatchNorm) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Backend& b = *backend;
  Rng rng(2);
  // linear
  Tensor x = random_tensor(b, Shape{3, 4}, rng, InputKind::normal),
         w = random_tensor(b, Shape{2, 4}, rng, InputKind::normal);
  Tensor bias = random_tensor(b, Shape{2}, rng, InputKind::normal), y = b.allocate(Shape{3, 2});
  b.linear_forward(x, w, &bias, y);
  auto xs = to_host(b, x), ws = to_host(b, w), bs = to_host(b, bias), ys = to_host(b, y);
  for (int i = 0; i < 3; ++i)
    for (int o = 0; o < 2; ++o) {
      double s = bs[o];
      for (int j = 0; j < 4; ++j) s += xs[i * 4 + j] * ws[o * 4 + j];
      EXPECT_NEAR(ys[i * 2 + o], s, 1e-5);
    }
  // max pool 2x2
  Tensor px = random_tensor(b, Shape{1, 2, 4, 4}, rng, InputKind::normal), py = b.allocate(Shape{1, 2, 2, 2}), ws2;
  b.pool_forward(px, py, ws2, PoolParams{PoolKind::max, 2, 2, 0}, true);
  auto pxs = to_host(b, px), pys = to_host(b, py);
  for (int c = 0; c < 2; ++c)
    for (int oy = 0; oy < 2; ++oy)
      for (int ox = 0; ox < 2; ++ox) {
        float m = -1e30f;
        for (int dy = 0; dy < 2; ++dy)
          for (int dx = 0; dx < 2; ++dx) m = std::max(m, pxs[(c * 4 + oy * 2 + dy) * 4 + ox * 2 + dx]);
        EXPECT_EQ(pys[(c * 2 + oy) * 2 + ox], m);
      }
  // batch norm (training): per-channel standardisation, running stats updated with momentum
  Tensor bx = random_tensor(b, Shape{4, 2, 3, 3}, rng, InputKind::normal), by = b.allocate(Shape{4, 2, 3, 3});
  Tensor gamma = b.allocate(Shape{2}), beta = b.allocate(Shape{2}), rm = b.allocate(Shape{2}),
         rv = b.allocate(Shape{2});
  b.fill(gamma, 2.f);
  b.fill(beta, 0.5f);
  b.fill(rv, 1.f);
  Tensor sm, sv;
  b.batch_norm_forward_training(bx, gamma, beta, by, rm, rv, sm, sv, 0.1f, 1e-5f);
  auto bxs = to_host(b, bx), bys = to_host(b, by), rms = to_host(b, rm), rvs = to_host(b, rv);
  for (int c = 0; c < 2; ++c) {
    double mean = 0, var = 0;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 9; ++j) mean += bxs[(i * 2 + c) * 9 + j];
    mean /= 36;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 9; ++j) var += std::pow(bxs[(i * 2 + c) * 9 + j] - mean, 2);
    var /= 36;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 9; ++j) {
        double expect = 2 * (bxs[(i * 2 + c) * 9 + j] - mean) / std::sqrt(var + 1e-5) + 0.5;
        EXPECT_NEAR(bys[(i * 2 + c) * 9 + j], expect, 1e-4);
      }
    EXPECT_NEAR(rms[c], 0.1 * mean, 1e-5);
    EXPECT_NEAR(rvs[c], 0.9 + 0.1 * var * 36 / 35, 1e-5) << "running variance is unbiased";
  }
}

TEST(ForwardReference, DropoutKeepsExpectationAndIsDeterministic) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Tensor x = backend->allocate(Shape{100000}), y1 = backend->allocate(Shape{100000}),
         y2 = backend->allocate(Shape{100000});
  backend->fill(x, 1.f);
  Tensor m1, m2;
  backend->dropout_forward(x, y1, m1, 0.3f, 77);
  backend->dropout_forward(x, y2, m2, 0.3f, 77);
  auto a = to_host(*backend, y1), c = to_host(*backend, y2);
  EXPECT_EQ(a, c);
  double mean = std::accumulate(a.begin(), a.end(), 0.0) / static_cast<double>(a.size());
  EXPECT_NEAR(mean, 1.0, 0.01);
  auto zeros = std::count(a.begin(), a.end(), 0.f);
  EXPECT_NEAR(static_cast<double>(zeros) / static_cast<double>(a.size()), 0.3, 0.01);
}

TEST(Backend, AllFiniteFindsNanAndInfinity) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  Tensor t = backend->allocate(Shape{3000000});
  EXPECT_TRUE(backend->all_finite(t));
  t.data<float>()[2999999] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(backend->all_finite(t));
  t.data<float>()[2999999] = std::numeric_limits<float>::max();
  EXPECT_TRUE(backend->all_finite(t)) << "large is not infinite";
  t.data<float>()[17] = std::nanf("");
  EXPECT_FALSE(backend->all_finite(t));
}

TEST(ModelZoo, ShapesAndParameterCounts) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  struct Case {
    const char* name;
    Shape input;
    std::int64_t params;
  } cases[] = {
      {"mlp", Shape{1, 28, 28}, 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10},
      {"cnn", Shape{1, 28, 28}, 320 + 18496 + 3136 * 128 + 128 + 1290},
      {"cnn", Shape{3, 32, 32}, 3 * 9 * 32 + 32 + 18496 + 4096 * 128 + 128 + 1290},
      {"cnn_bn", Shape{1, 28, 28}, 320 + 18496 + 3136 * 128 + 128 + 1290 + 2 * (32 + 64 + 128)},
      {"resnet20", Shape{3, 32, 32}, 272474},
  };
  for (const auto& c : cases) {
    auto m = build_model(c.name, c.input, 10);
    m->build(*backend, 1);
    EXPECT_EQ(m->params().parameter_count(), c.params) << c.name << " " << c.input.str();
    LayerContext ctx{*backend, false, 0};
    std::vector<std::int64_t> dims{2};
    dims.insert(dims.end(), c.input.dims().begin(), c.input.dims().end());
    Tensor x = backend->allocate(Shape(dims));
    EXPECT_EQ(m->forward(ctx, x).shape(), (Shape{2, 10})) << c.name;
  }
  EXPECT_THROW(build_model("vgg", Shape{1, 28, 28}, 10), ConfigError);
  EXPECT_THROW(build_model("resnet20", Shape{3, 32, 16}, 10), ConfigError) << "global pooling of a 8x4 map";
}

TEST(ModelZoo, InitialisationIsDeterministicPerSeed) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  auto a = build_model("cnn", Shape{1, 28, 28}, 10), b = build_model("cnn", Shape{1, 28, 28}, 10),
       c = build_model("cnn", Shape{1, 28, 28}, 10);
  a->build(*backend, 3);
  b->build(*backend, 3);
  c->build(*backend, 4);
  auto va = to_host(*backend, a->params().values()), vb = to_host(*backend, b->params().values()),
       vc = to_host(*backend, c->params().values());
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  // PyTorch's default bound: conv1 has fan-in 9, so weights lie in [-1/3, 1/3].
  const Parameter* w = a->params().find("conv1.weight");
  ASSERT_NE(w, nullptr);
  auto ws = to_host(*backend, w->value);
  EXPECT_LE(*std::max_element(ws.begin(), ws.end()), 1.0f / 3);
  EXPECT_GE(*std::min_element(ws.begin(), ws.end()), -1.0f / 3);
}

}  // namespace
}  // namespace shoal
