// What the coordinator hands workers: the book of work of a job. LeaseBook (async: data shards
// leased to whoever asks) and SyncBook (sync: every rank trains its part of each epoch in
// lock-step, then evaluates its part of the test set) answer the same questions.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "data/shard.h"

namespace shoal {

struct ShardStats {
  std::int64_t samples = 0;
  double loss_sum = 0;
  std::int64_t correct = 0;
  double data_wait_seconds = 0;  // of the shard's time, waiting for the input pipeline
};

struct EpochReport {
  std::int64_t epoch = 0;
  std::int64_t samples_total = 0;
  std::int64_t samples_done = 0;       // samples in shards completed, each shard counted once
  std::int64_t samples_processed = 0;  // every completion, duplicates included
  std::int64_t shards_total = 0, shards_done = 0, shards_released = 0;
  double loss_sum = 0;
  std::int64_t correct = 0;
  bool complete = false;
  bool evaluated = false;
  double test_loss = 0, test_accuracy = 0;
  double train_seconds = 0;  // sync: the slowest rank's training time (0: not measured)
  // Every completion's time and, of it, the wait for the input pipeline (summed over workers).
  double step_seconds = 0, data_wait_seconds = 0;
  std::chrono::steady_clock::time_point started{}, completed{};
};

class WorkBook {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;

  struct Task {
    enum Kind { train, evaluate, wait, finished } kind = wait;
    DataShard shard;
    std::int64_t epoch = 0;  // evaluate
  };

  virtual ~WorkBook() = default;
  virtual Task next(const std::string& worker, TimePoint now) = 0;
  // A worker reports a finished shard. Returns false if the shard was unknown or already
  // done (the samples still count as processed).
  virtual bool complete(const std::string& worker, std::int64_t epoch, std::int64_t index, const ShardStats& stats,
                        double seconds, TimePoint now) = 0;
  virtual bool evaluated(const std::string& worker, std::int64_t epoch, double loss, double accuracy) = 0;
  // The worker's evaluation of `epoch` is passed without a result of its own (an elastic sync
  // rank whose world evaluated it before it joined, or before the world changed). False where
  // that cannot happen (async: evaluations are leased) or the worker was not evaluating it.
  virtual bool pass_evaluation(const std::string& worker, std::int64_t epoch) = 0;
  // Failover: `worker` held this shard (or, `evaluation`, the evaluation of `epoch`) when the
  // coordinator was restarted: it is leased to it again instead of to whoever asks first. False
  // when it is not waiting in the queue (done already, or leased to another). Sync: never.
  virtual bool hold(const std::string& /*worker*/, bool /*evaluation*/, std::int64_t /*epoch*/, std::int64_t /*index*/,
                    TimePoint /*now*/) {
    return false;
  }
  // Whether shard `index` of `epoch` is done (async; sync: never asked).
  virtual bool shard_done(std::int64_t /*epoch*/, std::int64_t /*index*/) const { return false; }
  // A worker died: its work goes back to the queue; returns how many shards did.
  virtual int release(const std::string& worker) = 0;
  // Leases past their deadline go back to the queue; returns how many.
  virtual int expire(TimePoint now) = 0;
  // Every lease goes back to the queue (a parameter server was lost: work in progress is
  // redone); returns how many. Sync: nothing is leased.
  virtual int release_all() = 0;
  // Training shards handed out and not reported yet (a checkpoint's drain waits for none).
  virtual std::size_t outstanding_shards() const = 0;
  virtual bool finished() const = 0;
  // Epochs completed (and evaluated) since the last call, in order.
  virtual std::vector<EpochReport> take_completed() = 0;
  // The data position as text (the `position` file of a checkpoint, docs/checkpoint-format.md).
  virtual std::string save() const = 0;
  // Takes a checkpoint's position before any work was handed out. Throws CheckpointError when
  // the text is malformed or was cut from another job's plan. Returns the epochs already
  // evaluated, for the job's report.
  virtual std::vector<EpochReport> restore(const std::string& text, TimePoint now) = 0;
};

}  // namespace shoal
