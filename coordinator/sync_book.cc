#include "coordinator/sync_book.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <ostream>
#include <sstream>

#include "base/error.h"

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
  p.report.samples_done += stats.samples;
  p.report.samples_processed += stats.samples;
  p.report.loss_sum += stats.loss_sum;
  p.report.correct += stats.correct;
  p.report.shards_done += 1;
  p.report.train_seconds = std::max(p.report.train_seconds, seconds);
  p.report.step_seconds += std::max(0.0, seconds);
  p.report.data_wait_seconds += std::max(0.0, stats.data_wait_seconds);
  settle(e, now);
  return true;
}

void SyncBook::settle(std::int64_t e, TimePoint now) {
  if (static_cast<int>(stage_.size()) < world_) return;  // a rank has not asked yet
  Progress& p = epoch(e);
  const bool trained =
      std::all_of(stage_.begin(), stage_.end(), [&](const auto& kv) { return kv.second > 2 * (e - 1); });
  const bool evaluated =
      std::all_of(stage_.begin(), stage_.end(), [&](const auto& kv) { return kv.second > 2 * e - 1; });
  if (trained && !p.report.complete) {
    p.report.complete = true;
    p.report.completed = now;
  }
  if (evaluated) p.report.evaluated = true;
}

void SyncBook::remove(const std::string& worker, TimePoint now) {
  stage_.erase(worker);
  if (world_ > 1) --world_;
  for (auto& [e, p] : epochs_progress_)
    if (!p.report.complete || !p.report.evaluated) settle(e, now);
}

std::int64_t SyncBook::training_epoch() const {
  if (static_cast<int>(stage_.size()) < world_ || stage_.empty()) return -1;
  const std::int64_t s = stage_.begin()->second;
  for (const auto& [worker, stage] : stage_)
    if (stage != s) return -1;
  return s % 2 == 0 && s < 2 * epochs_ ? s / 2 + 1 : -1;
}

void SyncBook::add(const std::string& worker) {
  std::int64_t at = first_stage_;
  if (!stage_.empty()) {
    at = stage_.begin()->second;
    for (const auto& [w, s] : stage_) at = std::min(at, s);
  }
  stage_[worker] = at;
  ++world_;
}

bool SyncBook::evaluated(const std::string& worker, std::int64_t e, double loss, double accuracy) {
  std::int64_t& s = stage(worker);
  if (s != 2 * (e - 1) + 1) return false;
  ++s;
  Progress& p = epoch(e);
  // Every rank reports the same all-reduced result.
  p.report.test_loss = loss;
  p.report.test_accuracy = accuracy;
  settle(e, std::chrono::steady_clock::now());
  return true;
}

bool SyncBook::pass_evaluation(const std::string& worker, std::int64_t e) {
  std::int64_t& s = stage(worker);
  if (s != 2 * (e - 1) + 1) return false;
  ++s;
  settle(e, std::chrono::steady_clock::now());
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

std::int64_t SyncBook::next_train_epoch(const std::string& worker) const {
  auto it = stage_.find(worker);
  const std::int64_t s = it == stage_.end() ? first_stage_ : it->second;
  return s % 2 == 0 && s <= 2 * epochs_ ? s / 2 + 1 : -1;  // epochs + 1: after the last one
}

std::int64_t SyncBook::boundary() const {
  if (static_cast<int>(stage_.size()) < world_) return -1;
  std::int64_t s = stage_.begin()->second;
  for (const auto& [worker, stage] : stage_)
    if (stage != s) return -1;
  return s % 2 == 0 ? s / 2 : -1;
}

namespace {

void write_done_epochs(std::ostream& out, std::int64_t samples, std::int64_t done,
                       const std::function<const EpochReport&(std::int64_t)>& report) {
  out << "kind sync\nsamples " << samples << "\nepochs_done " << done << "\n";
  for (std::int64_t e = 1; e <= done; ++e) {
    const EpochReport& r = report(e);
    char line[256];
    std::snprintf(line, sizeof(line),
                  "epoch %lld loss_sum %a correct %lld samples %lld test_loss %a test_accuracy %a\n",
                  static_cast<long long>(e), r.loss_sum, static_cast<long long>(r.correct),
                  static_cast<long long>(r.samples_done), r.test_loss, r.test_accuracy);
    out << line;
  }
}

}  // namespace

std::string SyncBook::save() const {
  const std::int64_t done = boundary();
  SHOAL_ASSERT(done >= 0, "a sync position cut between epoch boundaries");
  std::ostringstream out;
  write_done_epochs(out, samples_, done,
                    [&](std::int64_t e) -> const EpochReport& { return epochs_progress_.at(e).report; });
  return out.str();
}

std::string SyncBook::save_within(std::int64_t epoch, std::int64_t position, std::int64_t samples, double loss_sum,
                                  std::int64_t correct) const {
  SHOAL_ASSERT(epoch >= 1 && position >= 0 && position <= samples_, "a sync cut outside the job");
  std::ostringstream out;
  write_done_epochs(out, samples_, epoch - 1,
                    [&](std::int64_t e) -> const EpochReport& { return epochs_progress_.at(e).report; });
  // A job resumed from an earlier cut of this epoch holds that cut's statistics (the ranks report
  // theirs at the epoch's end): the new cut carries both.
  if (auto it = epochs_progress_.find(epoch); it != epochs_progress_.end()) {
    samples += it->second.report.samples_done;
    loss_sum += it->second.report.loss_sum;
    correct += it->second.report.correct;
  }
  samples = std::min(samples, position);
  correct = std::min(correct, samples);
  char line[256];
  std::snprintf(line, sizeof(line), "in_epoch %lld position %lld samples %lld loss_sum %a correct %lld\n",
                static_cast<long long>(epoch), static_cast<long long>(position), static_cast<long long>(samples),
                loss_sum, static_cast<long long>(correct));
  out << line;
  return out.str();
}

std::vector<EpochReport> SyncBook::restore(const std::string& text, TimePoint now) {
  SHOAL_ASSERT(stage_.empty(), "restore into a sync book in use");
  std::istringstream in(text);
  std::string line;
  std::map<std::string, std::string> head;
  std::vector<EpochReport> done;
  struct Within {
    std::int64_t epoch, position, samples;
    double loss_sum;
    std::int64_t correct;
  };
  std::optional<Within> within;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key;
    if (!(words >> key)) continue;
    if (key == "in_epoch") {
      long long e = -1, at = -1, samples = -1, correct = -1;
      std::string k1, k2, k3, k4, loss;
      SHOAL_REQUIRE((words >> e >> k1 >> at >> k2 >> samples >> k3 >> loss >> k4 >> correct) && k1 == "position" &&
                        k2 == "samples" && k3 == "loss_sum" && k4 == "correct" && e >= 1 && e <= epochs_ && at >= 0 &&
                        at <= samples_ && samples >= 0 && samples <= samples_ && correct >= 0 && correct <= samples,
                    CheckpointError, "position: malformed or out-of-range in_epoch line '" << line << "'");
      within = Within{e, at, samples, std::strtod(loss.c_str(), nullptr), correct};
      SHOAL_REQUIRE(std::isfinite(within->loss_sum), CheckpointError, "position: in_epoch loss_sum is not finite");
      continue;
    }
    if (key != "epoch") {
      std::string value;
      words >> value;
      head[key] = value;
      continue;
    }
    EpochReport r;
    long long e = 0, correct = 0, samples = 0;
    std::string k1, k2, k3, k4, k5, loss, test_loss, test_accuracy;
    SHOAL_REQUIRE(words >> e >> k1 >> loss >> k2 >> correct >> k3 >> samples >> k4 >> test_loss >> k5 >> test_accuracy,
                  CheckpointError, "position: malformed epoch line '" << line << "'");
    r.epoch = e;
    r.loss_sum = std::strtod(loss.c_str(), nullptr);
    r.correct = correct;
    r.samples_done = r.samples_processed = samples;
    r.samples_total = samples_;
    r.test_loss = std::strtod(test_loss.c_str(), nullptr);
    r.test_accuracy = std::strtod(test_accuracy.c_str(), nullptr);
    r.complete = r.evaluated = true;
    r.started = r.completed = now;
    done.push_back(r);
  }
  SHOAL_REQUIRE(head["kind"] == "sync", CheckpointError,
                "the checkpoint is an asynchronous job's (its data position is in shards): resume it with strategy = "
                "async");
  SHOAL_REQUIRE(head["samples"] == std::to_string(samples_), CheckpointError,
                "the checkpoint's data position is of " << head["samples"] << " training samples; this job has "
                                                        << samples_ << " (data.train_limit)");
  const long long epochs_done = std::atoll(head["epochs_done"].c_str());
  SHOAL_REQUIRE(epochs_done >= 0 && epochs_done == static_cast<long long>(done.size()), CheckpointError,
                "position: " << head["epochs_done"] << " epochs done but " << done.size() << " epoch lines");
  for (std::size_t i = 0; i < done.size(); ++i) {
    SHOAL_REQUIRE(done[i].epoch == static_cast<std::int64_t>(i) + 1, CheckpointError,
                  "position: epoch lines are not 1.." << done.size() << " in order");
    Progress& p = epoch(done[i].epoch);
    p.report = done[i];
    p.report.shards_total = p.report.shards_done = world_;
  }
  first_stage_ = 2 * epochs_done;
  next_report_ = epochs_done + 1;
  if (within) {
    SHOAL_REQUIRE(within->epoch == epochs_done + 1, CheckpointError,
                  "position: cut in epoch " << within->epoch << " after " << epochs_done << " epochs done");
    // The samples trained before the cut count towards the epoch's report; the ranks report the
    // rest (they resume at the position, docs/checkpoint-format.md).
    EpochReport& r = epoch(within->epoch).report;
    r.samples_done = r.samples_processed = within->samples;
    r.loss_sum = within->loss_sum;
    r.correct = within->correct;
    r.started = now;
  }
  return done;
}

}  // namespace shoal
