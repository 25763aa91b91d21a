// The work of a synchronous (all-reduce) job. Every rank trains its part of each whole epoch
// in lock-step (the per-rank plan of models/shard.h: the coordinator hands out the epoch's
// positions, every rank cuts the same plan), then evaluates its part of the test set; the
// ranks' all-reduced results come back from every rank. An epoch is reported once every rank
// trained and evaluated it. Nothing is ever re-leased: a lost rank ends the job (elastic
// recovery re-plans from the coordinator's position instead).
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
  int release(const std::string& /*worker*/) override { return 0; }
  int expire(TimePoint /*now*/) override { return 0; }
  bool finished() const override;
  std::vector<EpochReport> take_completed() override;

 private:
  struct Progress {
    int trained = 0, evaluated = 0;
    EpochReport report;
  };
  // Stage 2(e-1): train epoch e; 2(e-1)+1: evaluate it; 2 * epochs: done.
  std::int64_t& stage(const std::string& worker) { return stage_[worker]; }
  Progress& epoch(std::int64_t e);

  std::int64_t samples_, epochs_;
  int world_;
  std::map<std::string, std::int64_t> stage_;
  std::map<std::int64_t, Progress> epochs_progress_;
  std::int64_t next_report_ = 1;
};

}  // namespace shoal
