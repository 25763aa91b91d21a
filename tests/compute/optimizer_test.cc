// Optimizer steps against values worked out by hand, schedules at their corners, and the
// property a parameter server relies on: updating chunks separately equals updating the whole.
#include "compute/lr_schedule.h"
#include "compute/optimizer.h"
#include "compute/devices/devices.h"

#include <gtest/gtest.h>

#include <cmath>

#include "base/error.h"

namespace shoal {
namespace {

struct OneParam {
  std::unique_ptr<Backend> backend = make_backend(BackendOptions{Device::cpu(), 1});
  Tensor w = backend->allocate(Shape{1});
  Tensor g = backend->allocate(Shape{1});
  OneParam(float w0) { w.data<float>()[0] = w0; }
  float step(const Optimizer& opt, OptimizerState& state, float grad, float lr) {
    g.data<float>()[0] = grad;
    opt.apply(*backend, w, g, state, lr);
    return w.data<float>()[0];
  }
};

TEST(Optimizer, PlainSgdAndWeightDecay) {
  OneParam p(1.0f);
  Optimizer sgd(OptimizerConfig{OptimizerKind::sgd, 0.1f, 0.f});
  auto state = sgd.make_state(*p.backend, 1);
  EXPECT_EQ(sgd.slot_count(), 0);
  EXPECT_FLOAT_EQ(p.step(sgd, state, 0.5f, 0.1f), 0.95f);  // 1 - 0.1 * 0.5
  OneParam q(1.0f);
  OptimizerConfig c{OptimizerKind::sgd, 0.1f, 0.f};
  c.weight_decay = 0.1f;
  Optimizer decayed(c);
  auto s2 = decayed.make_state(*q.backend, 1);
  EXPECT_FLOAT_EQ(q.step(decayed, s2, 0.5f, 0.1f), 0.94f);  // 1 - 0.1 * (0.5 + 0.1 * 1)
}

TEST(Optimizer, Momentum) {
  OneParam p(1.0f);
  Optimizer opt(OptimizerConfig{OptimizerKind::sgd, 0.1f, 0.9f});
  auto state = opt.make_state(*p.backend, 1);
  EXPECT_FLOAT_EQ(p.step(opt, state, 0.5f, 0.1f), 0.95f);   // v = 0.5, w = 1 - 0.05
  EXPECT_FLOAT_EQ(p.step(opt, state, 0.5f, 0.1f), 0.855f);  // v = 0.45 + 0.5 = 0.95, w = 0.95 - 0.095
  EXPECT_FLOAT_EQ(state.slots[0].data<float>()[0], 0.95f);
}

TEST(Optimizer, Nesterov) {
  OneParam p(1.0f);
  OptimizerConfig c{OptimizerKind::sgd, 0.1f, 0.9f, true};
  Optimizer opt(c);
  auto state = opt.make_state(*p.backend, 1);
  EXPECT_FLOAT_EQ(p.step(opt, state, 0.5f, 0.1f), 0.905f);   // v = 0.5; w -= 0.1 * (0.5 + 0.45)
  EXPECT_FLOAT_EQ(p.step(opt, state, 0.5f, 0.1f), 0.7695f);  // v = 0.95; w -= 0.1 * (0.5 + 0.855)
}

TEST(Optimizer, Adam) {
  OneParam p(1.0f);
  OptimizerConfig c;
  c.kind = OptimizerKind::adam;
  Optimizer opt(c);
  auto state = opt.make_state(*p.backend, 1);
  // Step 1: m = 0.05, v = 0.00025; bias-corrected 0.5 and 0.25, so the step is exactly lr.
  EXPECT_NEAR(p.step(opt, state, 0.5f, 1e-3f), 0.999f, 1e-7);
  // Step 2 with g = -1: m = 0.045 - 0.1 = -0.055, v = 0.00024975 + 0.001 = 0.00124975;
  // m^ = -0.055 / 0.19 = -0.2894737, v^ = 0.00124975 / 0.001999 = 0.6251876, sqrt = 0.7906880;
  // w = 0.999 + 0.001 * 0.2894737 / 0.7906880 = 0.9993661.
  EXPECT_NEAR(p.step(opt, state, -1.0f, 1e-3f), 0.9993661f, 2e-7);
  EXPECT_EQ(state.updates, 2);
}

TEST(Optimizer, AdamWDecaysWeightsDirectly) {
  OneParam p(2.0f);
  OptimizerConfig c;
  c.kind = OptimizerKind::adamw;
  c.weight_decay = 0.1f;
  Optimizer opt(c);
  auto state = opt.make_state(*p.backend, 1);
  // w = 2 - 0.01 * 0.1 * 2 = 1.998, then the Adam step of exactly lr: 1.988.
  EXPECT_NEAR(p.step(opt, state, 0.5f, 0.01f), 1.988f, 1e-6);
}

TEST(Optimizer, ChunkedUpdatesEqualWholeUpdate) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  for (auto kind : {OptimizerKind::sgd, OptimizerKind::adam}) {
    OptimizerConfig c;
    c.kind = kind;
    c.weight_decay = 0.01f;
    Optimizer opt(c);
    const std::int64_t n = 1000, split = 377;
    Tensor whole = backend->allocate(Shape{n}), chunked = backend->allocate(Shape{n}), g = backend->allocate(Shape{n});
    for (std::int64_t i = 0; i < n; ++i) {
      whole.data<float>()[i] = chunked.data<float>()[i] = 0.001f * static_cast<float>(i);
      g.data<float>()[i] = std::sin(static_cast<float>(i));
    }
    auto s_whole = opt.make_state(*backend, n);
    auto s_a = opt.make_state(*backend, split), s_b = opt.make_state(*backend, n - split);
    for (int step = 0; step < 3; ++step) {
      opt.apply(*backend, whole, g, s_whole, 0.05f);
      Tensor a = chunked.flat_slice(0, split), b = chunked.flat_slice(split, n - split);
      opt.apply(*backend, a, g.flat_slice(0, split), s_a, 0.05f);
      opt.apply(*backend, b, g.flat_slice(split, n - split), s_b, 0.05f);
    }
    for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(whole.data<float>()[i], chunked.data<float>()[i]) << i;
  }
}

TEST(LrSchedule, WarmupStepAndCosine) {
  LrSchedule s;
  s.base_lr = 1.0f;
  s.warmup_steps = 4;
  EXPECT_FLOAT_EQ(s.at(0), 0.25f);
  EXPECT_FLOAT_EQ(s.at(3), 1.0f);
  EXPECT_FLOAT_EQ(s.at(100), 1.0f);
  s.kind = LrScheduleKind::step;
  s.step_size = 10;
  s.gamma = 0.5f;
  EXPECT_FLOAT_EQ(s.at(13), 1.0f);
  EXPECT_FLOAT_EQ(s.at(14), 0.5f);
  EXPECT_FLOAT_EQ(s.at(34), 0.125f);
  s.kind = LrScheduleKind::cosine;
  s.total_steps = 104;
  s.min_lr = 0.1f;
  EXPECT_FLOAT_EQ(s.at(4), 1.0f);
  EXPECT_NEAR(s.at(54), 0.55f, 1e-6);  // half way: min + (base - min) / 2
  EXPECT_NEAR(s.at(104), 0.1f, 1e-6);
  EXPECT_NEAR(s.at(500), 0.1f, 1e-6);
}

TEST(Optimizer, ParsesNames) {
  EXPECT_EQ(parse_optimizer_kind("adamw"), OptimizerKind::adamw);
  EXPECT_THROW(parse_optimizer_kind("rmsprop"), ConfigError);
  EXPECT_THROW(parse_lr_schedule("linear"), ConfigError);
}

}  // namespace
}  // namespace shoal
