// The training controls of docs/training.md: gradient accumulation (k micro-batches of b equal
// one step of k*b), label smoothing (loss and gradient against the formula and finite
// differences), clipping by global norm (in the local/sync update, and by the trainer before a
// strategy that sends raw gradients), and no weight decay on biases and normalisation
// parameters (whole arena and a parameter server's chunk).
#include <gtest/gtest.h>

#include <cmath>

#include "compute/devices/devices.h"
#include "compute/rng.h"
#include "data/source.h"
#include "models/model_file.h"
#include "worker/trainer.h"
#include "tests/support/host_copy.h"

namespace shoal {
namespace {

using testing::to_host;

struct TrainedRun {
  std::vector<float> values;
  std::int64_t steps = 0;
};

// Trains `model` one epoch on the first 512 Fashion-MNIST samples, shuffled by the seed.
TrainedRun train(const std::string& model_name, std::int64_t batch, std::int64_t accumulate, OptimizerConfig opt,
          float smoothing = 0, Strategy* strategy_override = nullptr, float trainer_clip = 0) {
  static TrainTestData data = load_train_test("idx", "/usr/share/datasets/fashion-mnist", 512, 64);
  auto backend = make_backend(BackendOptions{Device::cpu(), 2});
  auto model = build_model(model_name, Shape{1, 28, 28}, 10);
  model->build(*backend, 3);
  LocalStrategy local(*backend, *model, Optimizer(opt));
  TrainerOptions options;
  options.epochs = 1;
  options.batch_size = batch;
  options.accumulate = accumulate;
  options.label_smoothing = smoothing;
  options.clip_norm = trainer_clip;
  options.seed = 5;
  options.schedule.base_lr = opt.lr;
  Progress progress(ProgressMode::off, stdout);
  MetricsWriter metrics;
  Normalization norm = compute_normalization(data.train);
  MemorySource train_set(data.train, norm);
  Trainer trainer(*backend, *model, strategy_override ? *strategy_override : local, options, Logger(), progress,
                  metrics);
  auto order = train_set.epoch_order(9, 1);
  trainer.train_shard(train_set, order, DataShard{1, 0, 0, train_set.count()});
  return TrainedRun{to_host(*backend, model->params().values()), trainer.step()};
}

// 4 micro-batches of 32 against batches of 128, SGD with momentum and weight decay, 4 steps:
// the same update but for the order of float additions (summed per micro-batch, then added),
// so within 2e-6 of each parameter's scale. mlp and cnn have no batch statistics (batch norm
// would see 32 samples instead of 128 and differ by design).
TEST(TrainingControls, AccumulatingFourMicroBatchesOf32EqualsOneStepOf128) {
  OptimizerConfig opt;
  opt.lr = 0.1f;
  opt.momentum = 0.9f;
  opt.weight_decay = 1e-3f;
  for (const char* model : {"mlp", "cnn"}) {
    SCOPED_TRACE(model);
    TrainedRun micro = train(model, 32, 4, opt), whole = train(model, 128, 1, opt), plain = train(model, 32, 1, opt);
    EXPECT_EQ(micro.steps, 4);
    EXPECT_EQ(whole.steps, 4);
    EXPECT_EQ(plain.steps, 16);
    ASSERT_EQ(micro.values.size(), whole.values.size());
    double worst = 0, moved = 0;
    for (std::size_t i = 0; i < micro.values.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::abs(micro.values[i] - whole.values[i])));
      moved = std::max(moved, static_cast<double>(std::abs(plain.values[i] - whole.values[i])));
    }
    std::printf("%s: largest difference accumulated vs one batch %.3g; 16 steps of 32 vs 4 of 128 %.3g\n", model,
                worst, moved);
    EXPECT_LT(worst, 2e-6);
    EXPECT_GT(moved, 1e-3) << "the comparison can tell different runs apart";
  }
}

// A last step with fewer micro-batches (512 samples in batches of 96: 5 full + 32, steps of 3
// micro-batches: 3 + 3) is a mean over its own samples.
TEST(TrainingControls, AShortLastStepAveragesItsOwnSamples) {
  OptimizerConfig opt;
  opt.lr = 0.1f;
  TrainedRun r = train("mlp", 96, 3, opt);
  EXPECT_EQ(r.steps, 2);
  for (float v : r.values) ASSERT_TRUE(std::isfinite(v));
}

TEST(TrainingControls, LabelSmoothingLossAndGradientFollowTheFormula) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  Backend& b = *backend;
  const int n = 4, k = 5;
  const float e = 0.1f;
  Rng rng(1);
  std::vector<float> z(n * k);
  for (auto& v : z) v = static_cast<float>(2 * rng.normal());
  std::vector<std::int32_t> labels{0, 3, 4, 1};
  Tensor logits = b.allocate(Shape{n, k}), y = b.allocate(Shape{n}, DType::i32), g = b.allocate(Shape{n, k});
  b.copy_from_host(z.data(), logits);
  b.copy_from_host(labels.data(), y);
  LossStats s = b.softmax_cross_entropy(logits, y, &g, 1.f / n, e);
  // The formula: -sum_j t_j log p_j, t = (1 - e) onehot + e / k.
  double expected = 0;
  for (int i = 0; i < n; ++i) {
    double mx = -1e30, sum = 0;
    for (int j = 0; j < k; ++j) mx = std::max(mx, static_cast<double>(z[i * k + j]));
    for (int j = 0; j < k; ++j) sum += std::exp(z[i * k + j] - mx);
    for (int j = 0; j < k; ++j) {
      const double logp = z[i * k + j] - mx - std::log(sum);
      const double t = (j == labels[i] ? 1 - e : 0) + e / k;
      expected -= t * logp;
    }
  }
  EXPECT_NEAR(s.loss_sum, expected, 1e-5 * expected);
  LossStats plain = b.softmax_cross_entropy(logits, y, nullptr, 1.f, 0.f);
  EXPECT_GT(std::abs(plain.loss_sum - s.loss_sum), 1e-3) << "smoothing changes the loss";
  // Finite differences of the mean smoothed loss.
  auto grad = to_host(b, g);
  const double h = 1e-3;
  for (int i = 0; i < n * k; ++i) {
    const float saved = z[i];
    z[i] = saved + static_cast<float>(h);
    b.copy_from_host(z.data(), logits);
    const double plus = b.softmax_cross_entropy(logits, y, nullptr, 1, e).loss_sum / n;
    z[i] = saved - static_cast<float>(h);
    b.copy_from_host(z.data(), logits);
    const double minus = b.softmax_cross_entropy(logits, y, nullptr, 1, e).loss_sum / n;
    z[i] = saved;
    EXPECT_NEAR(grad[i], (plus - minus) / (2 * h), 2e-4) << "logit " << i;
  }
  // In training: a run with smoothing differs from one without.
  OptimizerConfig opt;
  opt.lr = 0.1f;
  EXPECT_NE(train("mlp", 64, 1, opt, 0.1f).values, train("mlp", 64, 1, opt).values);
}

// Clipping in the update (single process; sync jobs clip the same way after the all-reduce):
// plain SGD moves the parameters by exactly lr * clip_norm when the gradient is longer.
TEST(TrainingControls, ClippingBoundsTheUpdateToLrTimesTheNorm) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  Backend& b = *backend;
  auto model = build_model("mlp", Shape{1, 28, 28}, 10);
  model->build(b, 1);
  OptimizerConfig opt;
  opt.lr = 0.5f;
  opt.momentum = 0;
  opt.clip_norm = 0.01f;
  LocalStrategy local(b, *model, Optimizer(opt));
  b.fill(model->params().grads(), 1.f);  // norm sqrt(n), far above 0.01
  auto before = to_host(b, model->params().values());
  local.end_step(*model, 0, opt.lr);
  auto after = to_host(b, model->params().values());
  double moved = 0;
  for (std::size_t i = 0; i < before.size(); ++i) moved += std::pow(static_cast<double>(after[i]) - before[i], 2);
  EXPECT_NEAR(std::sqrt(moved), opt.lr * opt.clip_norm, 1e-4);
  // Below the norm, nothing is scaled.
  b.fill(model->params().grads(), 1e-6f);
  EXPECT_NEAR(clip_by_global_norm(b, model->params().grads(), 1.f), 1e-6 * std::sqrt(before.size()), 1e-9);
  EXPECT_EQ(to_host(b, model->params().grads()).front(), 1e-6f);
}

// A strategy that sends gradients as they are (async): the trainer clips the whole gradient
// after backward and hands nothing over before (no gradients_ready during backward).
class RawSender final : public Strategy {
 public:
  bool sends_raw_gradients() const override { return true; }
  void gradients_ready(Model&, const std::vector<Parameter*>&) override { ++early; }
  void end_step(Model& model, std::int64_t, float) override {
    norms.push_back(std::sqrt(backend->sum_squares(model.params().grads())));
  }
  Backend* backend = nullptr;
  int early = 0;
  std::vector<double> norms;
};

TEST(TrainingControls, ATrainerClipsRawGradientsBeforeTheStrategySeesThem) {
  RawSender sender;
  auto cpu = make_backend(BackendOptions{Device::cpu(), 1});
  sender.backend = cpu.get();
  OptimizerConfig opt;
  train("mlp", 64, 1, opt, 0, &sender, 0.05f);
  ASSERT_EQ(sender.norms.size(), 8u);
  for (double norm : sender.norms) EXPECT_LE(norm, 0.05 * (1 + 1e-5));
  EXPECT_EQ(sender.early, 0);
  RawSender unclipped;
  unclipped.backend = cpu.get();
  train("mlp", 64, 1, opt, 0, &unclipped, 0.f);
  EXPECT_GT(unclipped.norms.front(), 0.05) << "the gradient was long enough to be clipped";
  EXPECT_GT(unclipped.early, 0) << "unclipped, gradients leave during backward";
}

// optimizer.decay_bias_and_norm = false: with zero gradients, weight decay shrinks the weights
// and leaves biases, batch-norm scales and shifts as they were; on the whole arena and on a
// parameter server's chunk (a slice at an offset that cuts through the ranges).
TEST(TrainingControls, NoWeightDecayOnBiasesAndNormalisationParameters) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  Backend& b = *backend;
  auto model = build_model("cnn_bn", Shape{1, 8, 8}, 10);
  model->build(b, 1);
  OptimizerConfig opt;
  opt.lr = 0.1f;
  opt.momentum = 0;
  opt.weight_decay = 0.5f;
  opt.decay_bias_and_norm = false;
  LocalStrategy local(b, *model, Optimizer(opt));
  b.fill(model->params().grads(), 0.f);
  auto before = to_host(b, model->params().values());
  local.end_step(*model, 0, opt.lr);
  auto after = to_host(b, model->params().values());
  for (const auto& p : model->params().parameters()) {
    const std::size_t i = static_cast<std::size_t>(p->offset);
    if (p->shape.rank() == 1) {
      EXPECT_EQ(after[i], before[i]) << p->name << " decayed";
    } else {
      EXPECT_FLOAT_EQ(after[i], before[i] * (1 - 0.1f * 0.5f)) << p->name;
    }
  }
  // A chunk [offset, offset + n) of the arena, as a parameter server updates it.
  Optimizer chunked(opt);
  chunked.exclude_from_decay(model->params().bias_and_norm_ranges());
  const Parameter* bias = model->params().find("conv1.bias");
  const std::int64_t offset = bias->offset - 5, n = 40;  // 5 weights, 32 biases, 3 of bn1.gamma
  Tensor values = Tensor::zeros(Shape{n}), grads = Tensor::zeros(Shape{n});
  b.fill(values, 1.f);
  OptimizerState state = chunked.make_state(b, n);
  chunked.apply(b, values, grads, state, 0.1f, offset);
  auto v = to_host(b, values);
  for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(v[static_cast<std::size_t>(i)], i < 5 ? 0.95f : 1.f) << i;
}

}  // namespace
}  // namespace shoal
