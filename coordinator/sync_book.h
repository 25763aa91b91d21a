// The work of a synchronous (all-reduce) job. Every rank trains its part of each whole epoch
// in lock-step (the per-rank plan of data/shard.h: the coordinator hands out the epoch's
// positions, every rank cuts the same plan), then evaluates its part of the test set; the
// ranks' all-reduced results come back from every rank. An epoch is reported once every rank
// trained and evaluated it. Nothing is ever re-leased: a lost rank ends the job, or with
// sync.elastic it is removed and the survivors re-plan the rest of the epoch among themselves.
#pragma once

#include <map>
#include <string>

#include "coordinator/work_book.h"

namespace shoal {

class SyncBook final : public WorkBook {
 public:
  SyncBook(std::int64_t samples, std::int64_t epochs, int world);

  Task next(const std::string& worker, TimePoint now) override;
  bool complete(const std::string& worker, std::int64_t epoch, std::int64_t index, const ShardStats& stats,
                double seconds, TimePoint now) override;
  bool evaluated(const std::string& worker, std::int64_t epoch, double loss, double accuracy) override;
  // The rank's stage moves past evaluating `epoch` without a result of its own (elastic: its
  // world evaluated it before it joined, or before the world changed).
  bool pass_evaluation(const std::string& worker, std::int64_t epoch) override;
  int release(const std::string& /*worker*/) override { return 0; }
  int expire(TimePoint /*now*/) override { return 0; }
  int release_all() override { return 0; }
  std::size_t outstanding_shards() const override { return 0; }
  bool finished() const override;
  std::vector<EpochReport> take_completed() override;

  // Epochs every rank trained and evaluated: a checkpoint can be cut after the last of them when
  // every rank is there (its next task is training the next epoch); -1 when the ranks are not
  // all at one epoch boundary.
  std::int64_t boundary() const;
  // The epoch `worker` trains next (epochs + 1 once it is done with the last), or -1 if its
  // next task is an evaluation.
  std::int64_t next_train_epoch(const std::string& worker) const;
  // The data position as text (a checkpoint's `position`): the epochs done and their reports.
  std::string save() const override;
  // The data position between two steps of epoch `epoch` (every rank at that step): the epochs
  // before it, and `position` samples of it trained, with their statistics for the whole world.
  std::string save_within(std::int64_t epoch, std::int64_t position, std::int64_t samples, double loss_sum,
                          std::int64_t correct) const;
  // A rank lost in an elastic job (sync.elastic): the world is one smaller; an epoch that waited
  // only for it is complete (the survivors report the samples of its completed steps).
  void remove(const std::string& worker, TimePoint now);
  // The epoch every rank of the world is training (none reported it yet), or -1 (a rank has not
  // asked for work yet, or they are between epochs or done).
  std::int64_t training_epoch() const;
  // A rank that joins a running elastic job: the world is one larger, and the rank starts where
  // the least advanced live rank stands (it takes the state of the most advanced by broadcast,
  // so it trains the rest of that epoch with the others).
  void add(const std::string& worker);
  // Takes a checkpoint's position before any rank asked for work: every rank starts after its
  // last epoch, or in the epoch it was cut in (its samples so far count towards its report: the
  // ranks train and report the rest). Throws CheckpointError when malformed or not a sync job's. Returns the epochs
  // done, for the job's report.
  std::vector<EpochReport> restore(const std::string& text, TimePoint now) override;

 private:
  struct Progress {
    EpochReport report;
  };
  // Stage 2(e-1): train epoch e; 2(e-1)+1: evaluate it; 2 * epochs: done.
  std::int64_t& stage(const std::string& worker) { return stage_.try_emplace(worker, first_stage_).first->second; }
  Progress& epoch(std::int64_t e);
  // Marks epoch e trained (evaluated) once every rank of the world is past that stage.
  void settle(std::int64_t e, TimePoint now);

  std::int64_t samples_, epochs_;
  int world_;
  std::map<std::string, std::int64_t> stage_;
  std::map<std::int64_t, Progress> epochs_progress_;
  std::int64_t next_report_ = 1;
  std::int64_t first_stage_ = 0;  // where a rank starts (2 x the epochs a restored job had done)
};

}  // namespace shoal
