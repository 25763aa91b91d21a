// Data-shard leases. Each epoch is cut into shards; a worker asks for work and gets the next
// shard (or an evaluation to run, or "wait", or "finished"). A lease not completed before
// its deadline, or held by a worker that died, goes back to the front of the queue, so the
// shards of a dead or slow worker are done by the others. Epochs overlap: once every shard of
// an epoch has been handed out, the next epoch's shards are offered, so no worker idles
// waiting for a slow one. The book counts, per epoch, every sample done (each shard once) and
// every sample processed (redone shards included).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/work_book.h"
#include "data/shard.h"

namespace shoal {

class LeaseBook final : public WorkBook {
 public:
  LeaseBook(std::int64_t samples, std::int64_t shard_size, std::int64_t epochs,
            std::chrono::steady_clock::duration lease_timeout);

  // A worker that asks while it holds a lease is handed that lease again (it never got the grant).
  Task next(const std::string& worker, TimePoint now) override;
  // A worker reports a finished shard. Returns false if the shard was unknown or already
  // done (the samples still count as processed).
  bool complete(const std::string& worker, std::int64_t epoch, std::int64_t index, const ShardStats& stats,
                double seconds, TimePoint now) override;
  bool evaluated(const std::string& worker, std::int64_t epoch, double loss, double accuracy) override;
  bool pass_evaluation(const std::string& /*worker*/, std::int64_t /*epoch*/) override { return false; }
  bool hold(const std::string& worker, bool evaluation, std::int64_t epoch, std::int64_t index, TimePoint now) override;
  bool shard_done(std::int64_t epoch, std::int64_t index) const override;
  // A worker died: its shards and evaluation go back to the queue.
  int release(const std::string& worker) override;
  // Leases past their deadline go back to the queue; returns how many.
  int expire(TimePoint now) override;
  // Every lease goes back to the queue (a parameter server was lost: work in progress is redone).
  int release_all() override;

  bool finished() const override;
  // Epochs completed (and evaluated) since the last call, in order.
  std::vector<EpochReport> take_completed() override;
  const std::map<std::int64_t, EpochReport>& reports() const { return reports_; }
  // Shards and evaluations handed out and not reported yet.
  std::size_t outstanding() const { return leases_.size() + eval_leases_.size(); }
  std::size_t outstanding_shards() const override { return leases_.size(); }

  // The data position as text (the `position` file of a checkpoint, docs/checkpoint-format.md):
  // per epoch opened, which shards are done and what its report holds so far.
  std::string save() const override;
  // Takes the position of a checkpoint (nothing must be leased yet): done shards stay done,
  // every other shard of an opened epoch is queued again, complete epochs not evaluated yet are
  // evaluated again. Throws CheckpointError when the text is malformed or was cut from another
  // plan (samples, shard size). Returns the epochs already evaluated, for the job's report.
  std::vector<EpochReport> restore(const std::string& text, TimePoint now) override;

 private:
  struct Lease {
    std::string worker;
    TimePoint deadline;
  };
  void open_next_epoch(TimePoint now);
  // Puts every shard and evaluation lease for which `lost` holds back in its queue; returns
  // the number of shard leases.
  int reclaim(const std::function<bool(const Lease&)>& lost);
  void requeue(std::int64_t epoch, std::int64_t index);

  std::int64_t samples_, shard_size_, epochs_;
  std::chrono::steady_clock::duration timeout_;
  std::int64_t opened_ = 0;                                  // epochs whose shards were queued
  std::deque<std::pair<std::int64_t, std::int64_t>> queue_;  // (epoch, shard index)
  std::map<std::pair<std::int64_t, std::int64_t>, Lease> leases_;
  std::map<std::int64_t, std::vector<bool>> done_;  // epoch -> shard done
  std::deque<std::int64_t> eval_queue_;
  std::map<std::int64_t, Lease> eval_leases_;
  std::map<std::int64_t, EpochReport> reports_;
  std::int64_t next_report_ = 1;
};

}  // namespace shoal
