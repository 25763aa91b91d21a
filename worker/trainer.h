// The training loop, written once: batches from data shards, forward, loss, backward with the
// strategy's hooks, learning-rate schedule, evaluation, progress and metrics. `shoal train`
// runs it with LocalStrategy; distributed workers run the same loop with another strategy and
// shards leased from the coordinator.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "compute/lr_schedule.h"
#include "base/log.h"
#include "config/config.h"
#include "telemetry/metrics_file.h"
#include "compute/optimizer.h"
#include "models/dataset.h"
#include "models/model.h"
#include "models/shard.h"
#include "worker/progress.h"
#include "worker/strategy.h"

namespace shoal {

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  std::int64_t samples = 0;
};

struct EpochResult {
  std::int64_t epoch = 0;
  double train_loss = 0, train_accuracy = 0;
  EvalResult test;
  double samples_per_second = 0;
  double seconds = 0;
};

struct TrainerOptions {
  std::int64_t epochs = 1;
  std::int64_t batch_size = 64;
  std::int64_t eval_batch_size = 1000;
  std::uint64_t seed = 1;
  LrSchedule schedule;
};

class Trainer {
 public:
  Trainer(Backend& backend, Model& model, Strategy& strategy, const Normalization& norm, TrainerOptions options,
          Logger log, Progress& progress, MetricsWriter& metrics);

  // Trains for options.epochs over `train`, evaluating on `test` after each epoch.
  std::vector<EpochResult> run(const Dataset& train, const Dataset& test);

  // One pass over the samples order[shard.begin, shard.end), in batches. Returns loss stats.
  LossStats train_shard(const Dataset& data, const std::vector<std::int64_t>& order, const DataShard& shard);
  // One optimisation step on these samples.
  LossStats train_batch(const Dataset& data, std::span<const std::int64_t> samples);
  EvalResult evaluate(const Dataset& data);
  // On samples [first, last) of `data` only.
  EvalResult evaluate(const Dataset& data, std::int64_t first, std::int64_t last);

  std::int64_t step() const { return step_; }
  // Resuming from a checkpoint: the learning-rate schedule and dropout go on from this step.
  void set_step(std::int64_t step) { step_ = step; }
  // An elastic sync world went from n to n' ranks (the global batch shrank by f = n'/n): from the
  // current step on, the rate is scaled by f (the linear scaling rule) and the schedule advances f
  // of a step per step, so it still ends with the last epoch (docs/sync-training.md).
  void rescale_schedule(double f);
  // The rescaling so far, to hand to a rank that joins an elastic world (it must run the same
  // schedule as the members it joins).
  struct ScheduleScaling {
    double lr_scale = 1, rate = 1, from = 0;
    std::int64_t at = 0;
  };
  ScheduleScaling schedule_scaling() const { return {lr_scale_, schedule_rate_, schedule_from_, rescaled_at_}; }
  void set_schedule_scaling(const ScheduleScaling& s) {
    lr_scale_ = s.lr_scale;
    schedule_rate_ = s.rate;
    schedule_from_ = s.from;
    rescaled_at_ = s.at;
  }
  // Where step `step` is in the schedule (the step itself unless the world was rescaled).
  double schedule_position(std::int64_t step) const;
  // The learning rate of step `step` (the schedule, with any rescaling).
  float lr_at(std::int64_t step) const;
  // When the flag turns true, train_shard stops after the current step and evaluate after the
  // current batch (its partial result is then meaningless).
  void set_stop_flag(const std::atomic<bool>* flag) { stop_ = flag; }
  bool stopped() const { return stop_ != nullptr && stop_->load(); }

 private:
  void load_batch(const Dataset& data, std::span<const std::int64_t> samples);

  Backend& backend_;
  Model& model_;
  Strategy& strategy_;
  Normalization norm_;
  TrainerOptions options_;
  Logger log_;
  Progress& progress_;
  MetricsWriter& metrics_;
  std::int64_t step_ = 0;
  // rescale_schedule: schedule position = schedule_from_ + (step - rescaled_at_) * schedule_rate_.
  double lr_scale_ = 1, schedule_rate_ = 1, schedule_from_ = 0;
  std::int64_t rescaled_at_ = 0;
  const std::atomic<bool>* stop_ = nullptr;
  Tensor x_, y_, dlogits_;
  // Device backends: two pinned host buffers and their device batches, used in turn.
  struct Staging {
    Tensor host_x, host_y, device_x, device_y;
    std::shared_ptr<DeviceEvent> uploaded;
  };
  Staging staging_[2];
  int slot_ = 0;
  // Running totals for the progress line of the current epoch.
  LossStats epoch_stats_;
  std::int64_t epoch_samples_ = 0;
  double epoch_seconds_ = 0;
};


// A worker's trainer options for a job: batch sizes, the seed of its randomness (dropout), and the
// job's learning-rate schedule for epochs of `steps_per_epoch` steps (the parameter servers build
// theirs with the same make_lr_schedule: ps/parameter_server.h, server_options).
TrainerOptions trainer_options(const JobConfig& config, std::uint64_t seed, std::int64_t steps_per_epoch);

}  // namespace shoal
