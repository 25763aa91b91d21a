// The training loop, written once: batches from data shards, forward, loss, backward with the
// strategy's hooks, learning-rate schedule, evaluation, progress and metrics. `shoal train`
// runs it with LocalStrategy; distributed workers run the same loop with another strategy and
// shards leased from the coordinator.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/log.h"
#include "compute/lr_schedule.h"
#include "compute/optimizer.h"
#include "config/config.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/source.h"
#include "models/model.h"
#include "telemetry/metrics_file.h"
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
  double data_wait_seconds = 0;  // of `seconds`, waiting for the input pipeline
  std::int64_t skipped = 0;      // bad samples passed over (data.on_bad_sample = skip)
};

struct TrainerOptions {
  std::int64_t epochs = 1;
  std::int64_t batch_size = 64;
  std::int64_t eval_batch_size = 1000;
  std::uint64_t seed = 1;
  LrSchedule schedule;
  std::uint64_t data_seed = 1;    // the job's seed: random transforms are (data_seed, epoch, sample)
  std::int64_t data_threads = 2;  // decoding data sets: threads of the input pipeline
  std::int64_t prefetch = 4;      // batches loaded ahead
  std::int64_t accumulate = 1;    // micro-batches per optimizer step
  float label_smoothing = 0;
  float clip_norm = 0;  // the trainer clips only for strategies that send raw gradients (async)
};

class Trainer {
 public:
  Trainer(Backend& backend, Model& model, Strategy& strategy, TrainerOptions options, Logger log, Progress& progress,
          MetricsWriter& metrics);
  ~Trainer();

  // Trains for options.epochs over `train`, evaluating on `test` after each epoch.
  std::vector<EpochResult> run(const DataSource& train, const DataSource& test);

  // One pass over the samples order[shard.begin, shard.end), in batches. Returns loss stats.
  LossStats train_shard(const DataSource& data, const std::vector<std::int64_t>& order, const DataShard& shard);
  // One optimisation step per batch, in order, the input pipeline loading ahead; before_step(i)
  // runs before batch i's step (sync: the global step's size and this rank's offset in it).
  // `running`, when given, holds the totals so far after every step (also when a step throws).
  LossStats train_batches(const DataSource& data, std::int64_t epoch,
                          const std::vector<std::span<const std::int64_t>>& batches,
                          const std::function<void(std::size_t)>& before_step = {}, LossStats* running = nullptr);
  // One optimisation step on these samples.
  LossStats train_batch(const DataSource& data, std::span<const std::int64_t> samples, std::int64_t epoch = 0);
  EvalResult evaluate(const DataSource& data);
  // On samples [first, last) of `data` only.
  EvalResult evaluate(const DataSource& data, std::int64_t first, std::int64_t last);

  // The current epoch's totals: seconds training, of which waiting for data, and bad samples
  // skipped (reset by begin_epoch_totals; the job loop reports them with the epoch).
  void begin_epoch_totals();
  double epoch_seconds() const { return epoch_seconds_; }
  double epoch_data_wait_seconds() const { return epoch_wait_seconds_; }
  std::int64_t epoch_skipped() const { return epoch_skipped_; }
  // Since the trainer was made: seconds waiting for the input pipeline (a worker reports the
  // difference across a shard).
  double total_data_wait_seconds() const { return total_wait_seconds_; }

  std::int64_t step() const { return step_; }
  // Between two optimizer steps (not between two micro-batches of one: train.accumulate).
  bool at_step_boundary() const { return !in_step_; }
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
  // Places a loaded batch where the model reads it (the device, for a GPU backend).
  void use_batch(const BatchLoader::Batch& batch);
  // One micro-batch; `closes_step`: the last of its optimizer step, whose micro-batches
  // requested `step_samples` samples in all.
  LossStats step_on(const BatchLoader::Batch& batch, bool closes_step, std::int64_t step_samples);
  // Ends the optimizer step: the accumulated gradient (plus the current one's when
  // `with_current`), clipped when the strategy sends raw gradients, handed to the strategy.
  void close_step(bool with_current);
  BatchLoader& loader_for(const DataSource& data);
  void wait_for_upload();

  Backend& backend_;
  Model& model_;
  Strategy& strategy_;
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
  // Gradient accumulation: the sum of this step's earlier micro-batches' gradients.
  Tensor grad_acc_;
  std::int64_t micro_ = 0;  // micro-batches in grad_acc_
  bool in_step_ = false;    // begin_step called, end_step not yet
  // The input pipeline: threads for data sets that decode, the caller's thread for in-memory ones.
  std::unique_ptr<BatchLoader> loader_, inline_loader_;
  // Device backends: the loader's batches are pinned; each is copied up into one of two device
  // batches used in turn, and its buffer is not handed back before its copy completed.
  struct Staging {
    Tensor device_x, device_y;
  };
  Staging staging_[2];
  int slot_ = 0;
  std::shared_ptr<DeviceEvent> uploaded_;
  // Running totals for the progress line of the current epoch.
  LossStats epoch_stats_;
  std::int64_t epoch_samples_ = 0;
  double epoch_seconds_ = 0, epoch_wait_seconds_ = 0, total_wait_seconds_ = 0;
  std::int64_t epoch_skipped_ = 0;
};

// A worker's trainer options for a job: batch sizes, the seed of its randomness (dropout), and the
// job's learning-rate schedule for epochs of `steps_per_epoch` steps (the parameter servers build
// theirs with the same make_lr_schedule: ps/parameter_server.h, server_options).
TrainerOptions trainer_options(const JobConfig& config, std::uint64_t seed, std::int64_t steps_per_epoch);

}  // namespace shoal
