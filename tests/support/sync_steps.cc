#include "tests/support/sync_steps.h"
#include "compute/devices/devices.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"
#include "base/log.h"
#include "telemetry/metrics_file.h"
#include "data/source.h"
#include "models/model.h"
#include "models/model_file.h"
#include "worker/progress.h"
#include "worker/sync_allreduce.h"
#include "worker/trainer.h"

namespace shoal {
namespace {

// Alone, with the synchronised batch-norm arithmetic in a world of one (the sum across ranks
// is the identity): the reference for sync.batch_norm = sync.
class AloneWithSyncBatchNorm final : public Strategy {
 public:
  AloneWithSyncBatchNorm(Backend& backend, Model& model, Optimizer optimizer)
      : local_(backend, model, std::move(optimizer)) {}
  void end_step(Model& model, std::int64_t step, float lr) override { local_.end_step(model, step, lr); }
  SumAcrossRanks batch_norm_sum() override {
    return [](std::span<float>) {};
  }

 private:
  LocalStrategy local_;
};

}  // namespace

std::vector<float> train_sync_steps(const SyncRun& run, Collective* collective) {
  const std::int64_t global = static_cast<std::int64_t>(run.batch) * run.world * run.accumulate;
  const std::int64_t samples = global * run.steps;
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  TrainTestData data = load_train_test("idx", "/usr/share/datasets/fashion-mnist", samples, 100);
  Normalization norm = compute_normalization(data.train);
  MemorySource train_set(data.train, norm);
  auto model =
      build_model(run.model, Shape{data.train.channels, data.train.height, data.train.width}, data.train.classes);
  // Ranks other than 0 start from other weights: the broadcast must make them equal.
  model->build(*backend, run.seed + (collective != nullptr ? static_cast<std::uint64_t>(collective->rank()) : 0));
  OptimizerConfig opt;
  opt.kind = OptimizerKind::sgd;
  opt.lr = run.lr;
  opt.momentum = 0.9f;
  Logger log("sync-steps", LogLevel::warn);
  Progress progress(ProgressMode::off, stdout);
  MetricsWriter metrics;
  TrainerOptions options;
  options.seed = run.seed;
  options.schedule.base_lr = opt.lr;
  auto order = epoch_permutation(data.train.count, run.seed, 1);
  const DataShard shard{1, 0, 0, samples};
  if (collective == nullptr) {
    options.batch_size = global;
    std::unique_ptr<Strategy> strategy;
    if (run.sync_batch_norm)
      strategy = std::make_unique<AloneWithSyncBatchNorm>(*backend, *model, Optimizer(opt));
    else
      strategy = std::make_unique<LocalStrategy>(*backend, *model, Optimizer(opt));
    Trainer trainer(*backend, *model, *strategy, options, log, progress, metrics);
    trainer.train_shard(train_set, order, shard);
  } else {
    options.batch_size = run.batch;
    options.accumulate = run.accumulate;
    SyncOptions so;
    so.bucket_bytes = run.bucket_bytes;
    so.timeout = std::chrono::duration<double>(60);
    so.sync_batch_norm = run.sync_batch_norm;
    so.batch_size = run.batch;
    SyncAllReduceStrategy strategy(*backend, *model, Optimizer(opt), *collective, log, so);
    strategy.broadcast_initial_state();
    Trainer trainer(*backend, *model, strategy, options, log, progress, metrics);
    strategy.train(trainer, train_set, order, shard);
    SHOAL_REQUIRE(strategy.clock() == static_cast<std::uint64_t>(run.steps), InternalError,
                  "took " << strategy.clock() << " steps, expected " << run.steps);
  }
  std::vector<float> out(
      static_cast<std::size_t>(model->params().values().numel() + model->params().buffer_values().numel()));
  backend->copy_to_host(model->params().values(), out.data());
  backend->copy_to_host(model->params().buffer_values(), out.data() + model->params().values().numel());
  return out;
}

double l2_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  SHOAL_REQUIRE(a.size() == b.size(), InternalError, "sizes differ: " << a.size() << " vs " << b.size());
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

Equivalence check_equivalence(const SyncRun& run, const std::vector<float>& rank_params) {
  std::vector<float> alone = train_sync_steps(run, nullptr);
  Equivalence e;
  e.difference = l2_relative_difference(rank_params, alone);
  if (run.sync_batch_norm) {
    SyncRun plain = run;
    plain.sync_batch_norm = false;  // oneDNN's batch norm, alone
    e.noise_floor = l2_relative_difference(train_sync_steps(plain, nullptr), alone);
  } else {
    e.noise_floor = 2.5e-5;  // measured: 6e-6 after 50 steps of `cnn`
  }
  e.tolerance = 4 * e.noise_floor + 1e-5;
  return e;
}

double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  SHOAL_REQUIRE(a.size() == b.size(), InternalError, "sizes differ: " << a.size() << " vs " << b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]) / (1.0 + std::abs(static_cast<double>(b[i]))));
  return worst;
}

}  // namespace shoal
