#include "coordinator/sync_book.h"

#include <algorithm>

#include "core/error.h"

namespace shoal {

SyncBook::SyncBook(std::int64_t samples, std::int64_t epochs, int world)
    : samples_(samples), epochs_(epochs), world_(world) {
  SHOAL_ASSERT(samples > 0 && epochs > 0 && world > 0, "bad sync book");
}

SyncBook::Progress& SyncBook::epoch(std::int64_t e) {
  auto [it, fresh] = epochs_progress_.try_emplace(e);
  if (fresh) {
    it->second.report.epoch = e;
    it->second.report.samples_total = samples_;
    it->second.report.shards_total = world_;
  }
  return it->second;
}

WorkBook::Task SyncBook::next(const std::string& worker, TimePoint now) {
  Task task;
  std::int64_t s = stage(worker);
  if (s >= 2 * epochs_) {
    task.kind = finished() ? Task::finished : Task::wait;
    return task;
  }
  std::int64_t e = s / 2 + 1;
  if (s % 2 == 0) {
    Progress& p = epoch(e);
    if (p.report.started == TimePoint{}) p.report.started = now;
    task.kind = Task::train;
    task.shard = DataShard{e, 0, 0, samples_};
  } else {
    task.kind = Task::evaluate;
    task.epoch = e;
  }
  return task;
}

bool SyncBook::complete(const std::string& worker, std::int64_t e, std::int64_t /*index*/, const ShardStats& stats,
                        double seconds, TimePoint now) {
  std::int64_t& s = stage(worker);
  if (s != 2 * (e - 1)) return false;  // a repeated report
  ++s;
  Progress& p = epoch(e);
  ++p.trained;
  p.report.samples_done += stats.samples;
  p.report.samples_processed += stats.samples;
  p.report.loss_sum += stats.loss_sum;
  p.report.correct += stats.correct;
  p.report.shards_done += 1;
  p.report.train_seconds = std::max(p.report.train_seconds, seconds);
  if (p.trained == world_) {
    p.report.complete = true;
    p.report.completed = now;
  }
  return true;
}

bool SyncBook::evaluated(const std::string& worker, std::int64_t e, double loss, double accuracy) {
  std::int64_t& s = stage(worker);
  if (s != 2 * (e - 1) + 1) return false;
  ++s;
  Progress& p = epoch(e);
  // Every rank reports the same all-reduced result.
  p.report.test_loss = loss;
  p.report.test_accuracy = accuracy;
  if (++p.evaluated == world_) p.report.evaluated = true;
  return true;
}

bool SyncBook::finished() const {
  if (static_cast<int>(stage_.size()) < world_) return false;
  return std::all_of(stage_.begin(), stage_.end(), [&](const auto& kv) { return kv.second >= 2 * epochs_; });
}

std::vector<EpochReport> SyncBook::take_completed() {
  std::vector<EpochReport> out;
  for (auto it = epochs_progress_.find(next_report_);
       it != epochs_progress_.end() && it->second.report.complete && it->second.report.evaluated;
       it = epochs_progress_.find(++next_report_))
    out.push_back(it->second.report);
  return out;
}

}  // namespace shoal
