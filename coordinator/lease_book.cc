#include "coordinator/lease_book.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <sstream>

#include "base/error.h"

namespace shoal {

LeaseBook::LeaseBook(std::int64_t samples, std::int64_t shard_size, std::int64_t epochs,
                     std::chrono::steady_clock::duration lease_timeout)
    : samples_(samples), shard_size_(shard_size), epochs_(epochs), timeout_(lease_timeout) {
  SHOAL_ASSERT(samples > 0 && shard_size > 0 && epochs > 0, "empty lease book");
}

void LeaseBook::open_next_epoch(TimePoint now) {
  ++opened_;
  auto shards = split_epoch(samples_, shard_size_, opened_);
  done_[opened_].assign(shards.size(), false);
  EpochReport& r = reports_[opened_];
  r.epoch = opened_;
  r.samples_total = samples_;
  r.shards_total = static_cast<std::int64_t>(shards.size());
  r.started = now;
  for (const auto& s : shards) queue_.emplace_back(opened_, s.index);
}

void LeaseBook::requeue(std::int64_t epoch, std::int64_t index) {
  queue_.emplace_front(epoch, index);
  ++reports_[epoch].shards_released;
}

LeaseBook::Task LeaseBook::next(const std::string& worker, TimePoint now) {
  Task task;
  // A worker asks only when it holds nothing: one that asks while a lease is its own never got
  // the grant (its reply was lost, or its request was answered by a coordinator that had just
  // taken the job over while the worker gave up on it): the same work again, not a second lease.
  for (auto& [key, lease] : leases_) {
    if (lease.worker != worker) continue;
    lease.deadline = now + timeout_;
    const std::int64_t begin = key.second * shard_size_;
    task.kind = Task::train;
    task.shard = DataShard{key.first, key.second, begin, std::min(samples_, begin + shard_size_)};
    return task;
  }
  for (auto& [epoch, lease] : eval_leases_) {
    if (lease.worker != worker) continue;
    lease.deadline = now + timeout_;
    task.kind = Task::evaluate;
    task.epoch = epoch;
    return task;
  }
  if (!eval_queue_.empty()) {
    task.kind = Task::evaluate;
    task.epoch = eval_queue_.front();
    eval_queue_.pop_front();
    eval_leases_[task.epoch] = Lease{worker, now + timeout_};
    return task;
  }
  if (queue_.empty() && opened_ < epochs_) open_next_epoch(now);
  if (!queue_.empty()) {
    auto [epoch, index] = queue_.front();
    queue_.pop_front();
    std::int64_t begin = index * shard_size_;
    task.kind = Task::train;
    task.shard = DataShard{epoch, index, begin, std::min(samples_, begin + shard_size_)};
    leases_[{epoch, index}] = Lease{worker, now + timeout_};
    return task;
  }
  task.kind = finished() ? Task::finished : Task::wait;
  return task;
}

bool LeaseBook::complete(const std::string& worker, std::int64_t epoch, std::int64_t index, const ShardStats& stats,
                         double seconds, TimePoint now) {
  auto d = done_.find(epoch);
  if (d == done_.end() || index < 0 || index >= static_cast<std::int64_t>(d->second.size())) return false;
  EpochReport& r = reports_[epoch];
  r.samples_processed += stats.samples;
  r.step_seconds += std::max(0.0, seconds);
  r.data_wait_seconds += std::max(0.0, stats.data_wait_seconds);
  if (d->second[index]) return false;
  (void)worker;  // a completion counts whoever holds the lease now: the work is done either way
  d->second[index] = true;
  leases_.erase({epoch, index});
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->first == epoch && it->second == index) {
      queue_.erase(it);
      break;
    }
  }
  std::int64_t begin = index * shard_size_;
  r.samples_done += std::min(samples_, begin + shard_size_) - begin;
  r.loss_sum += stats.loss_sum;
  r.correct += stats.correct;
  if (++r.shards_done == r.shards_total) {
    r.complete = true;
    r.completed = now;
    eval_queue_.push_back(epoch);
  }
  return true;
}

bool LeaseBook::evaluated(const std::string& worker, std::int64_t epoch, double loss, double accuracy) {
  auto it = reports_.find(epoch);
  if (it == reports_.end() || !it->second.complete || it->second.evaluated) return false;
  (void)worker;
  it->second.evaluated = true;
  it->second.test_loss = loss;
  it->second.test_accuracy = accuracy;
  eval_leases_.erase(epoch);
  for (auto q = eval_queue_.begin(); q != eval_queue_.end(); ++q) {
    if (*q == epoch) {
      eval_queue_.erase(q);
      break;
    }
  }
  return true;
}

bool LeaseBook::hold(const std::string& worker, bool evaluation, std::int64_t epoch, std::int64_t index,
                     TimePoint now) {
  if (evaluation) {
    auto it = std::find(eval_queue_.begin(), eval_queue_.end(), epoch);
    if (it == eval_queue_.end()) return false;
    eval_queue_.erase(it);
    eval_leases_[epoch] = Lease{worker, now + timeout_};
    return true;
  }
  // An epoch opened after the position was written (its first shards were leased, none was
  // reported yet): opened again, as then.
  while (opened_ < epoch && opened_ < epochs_) open_next_epoch(now);
  auto it = std::find(queue_.begin(), queue_.end(), std::make_pair(epoch, index));
  if (it == queue_.end()) return false;
  queue_.erase(it);
  leases_[{epoch, index}] = Lease{worker, now + timeout_};
  return true;
}

bool LeaseBook::shard_done(std::int64_t epoch, std::int64_t index) const {
  auto d = done_.find(epoch);
  return d != done_.end() && index >= 0 && index < static_cast<std::int64_t>(d->second.size()) &&
         d->second[static_cast<std::size_t>(index)];
}

int LeaseBook::reclaim(const std::function<bool(const Lease&)>& lost) {
  int n = 0;
  for (auto it = leases_.begin(); it != leases_.end();) {
    if (lost(it->second)) {
      requeue(it->first.first, it->first.second);
      it = leases_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  for (auto it = eval_leases_.begin(); it != eval_leases_.end();) {
    if (lost(it->second)) {
      eval_queue_.push_front(it->first);
      it = eval_leases_.erase(it);
    } else {
      ++it;
    }
  }
  return n;
}

int LeaseBook::release(const std::string& worker) {
  return reclaim([&](const Lease& lease) { return lease.worker == worker; });
}

int LeaseBook::release_all() {
  return reclaim([](const Lease&) { return true; });
}

int LeaseBook::expire(TimePoint now) {
  return reclaim([&](const Lease& lease) { return lease.deadline < now; });
}

bool LeaseBook::finished() const {
  if (opened_ < epochs_) return false;
  for (const auto& [epoch, r] : reports_)
    if (!r.complete || !r.evaluated) return false;
  return true;
}

std::vector<EpochReport> LeaseBook::take_completed() {
  std::vector<EpochReport> out;
  while (true) {
    auto it = reports_.find(next_report_);
    if (it == reports_.end() || !it->second.evaluated) break;
    out.push_back(it->second);
    ++next_report_;
  }
  return out;
}

namespace {

// "0-3,5,9-12" (ascending runs of done shards), "-" for none.
std::string done_list(const std::vector<bool>& done) {
  std::string out;
  for (std::size_t i = 0; i < done.size();) {
    if (!done[i]) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j + 1 < done.size() && done[j + 1]) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(i);
    if (j > i) {
      out += '-';
      out += std::to_string(j);
    }
    i = j + 1;
  }
  return out.empty() ? "-" : out;
}

std::int64_t parse_int(const std::string& text, const std::string& what) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  SHOAL_REQUIRE(used == text.size() && !text.empty() && v >= 0, CheckpointError,
                "position: " << what << " '" << text << "' is not a count");
  return v;
}

double parse_real(const std::string& text, const std::string& what) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  SHOAL_REQUIRE(!text.empty() && end == text.c_str() + text.size(), CheckpointError,
                "position: " << what << " '" << text << "' is not a number");
  return v;
}

std::string hex_real(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%a", v);  // exact
  return buf;
}

}  // namespace

std::string LeaseBook::save() const {
  std::ostringstream out;
  out << "samples " << samples_ << "\nshard_size " << shard_size_ << "\nepochs_opened " << opened_ << "\n";
  for (const auto& [epoch, r] : reports_) {
    out << "epoch " << epoch << " shards " << r.shards_total << " done " << done_list(done_.at(epoch))
        << " samples_done " << r.samples_done << " processed " << r.samples_processed << " released "
        << r.shards_released << " loss_sum " << hex_real(r.loss_sum) << " correct " << r.correct << " evaluated "
        << (r.evaluated ? 1 : 0) << " test_loss " << hex_real(r.test_loss) << " test_accuracy "
        << hex_real(r.test_accuracy) << "\n";
  }
  return out.str();
}

std::vector<EpochReport> LeaseBook::restore(const std::string& text, TimePoint now) {
  SHOAL_ASSERT(leases_.empty() && opened_ == 0, "restore into a lease book in use");
  std::istringstream in(text);
  std::string line;
  std::map<std::string, std::string> head;
  std::vector<std::map<std::string, std::string>> epochs;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    if (!(words >> key)) continue;
    if (key != "epoch") {
      SHOAL_REQUIRE(words >> value, CheckpointError, "position: no value for '" << key << "'");
      head[key] = value;
      continue;
    }
    std::map<std::string, std::string> fields;
    SHOAL_REQUIRE(words >> fields["epoch"], CheckpointError, "position: epoch line without a number");
    while (words >> key) {
      SHOAL_REQUIRE(words >> value, CheckpointError, "position: no value for '" << key << "' in '" << line << "'");
      fields[key] = value;
    }
    epochs.push_back(std::move(fields));
  }
  auto need = [](const std::map<std::string, std::string>& m, const std::string& key) -> const std::string& {
    auto it = m.find(key);
    SHOAL_REQUIRE(it != m.end(), CheckpointError, "position: '" << key << "' is missing");
    return it->second;
  };
  const std::int64_t samples = parse_int(need(head, "samples"), "samples");
  const std::int64_t shard_size = parse_int(need(head, "shard_size"), "shard_size");
  SHOAL_REQUIRE(samples == samples_ && shard_size == shard_size_, CheckpointError,
                "the checkpoint's data position is of " << samples << " training samples in shards of " << shard_size
                                                        << "; this job has " << samples_ << " in shards of "
                                                        << shard_size_ << " (data.train_limit, data.shard_size)");
  const std::int64_t opened = parse_int(need(head, "epochs_opened"), "epochs_opened");
  SHOAL_REQUIRE(opened == static_cast<std::int64_t>(epochs.size()), CheckpointError,
                "position: " << opened << " epochs opened but " << epochs.size() << " epoch lines");
  std::vector<EpochReport> evaluated;
  for (std::int64_t e = 1; e <= opened; ++e) {
    const auto& f = epochs[static_cast<std::size_t>(e - 1)];
    SHOAL_REQUIRE(parse_int(need(f, "epoch"), "epoch") == e, CheckpointError,
                  "position: epoch lines are not 1.." << opened << " in order");
    const auto shards = split_epoch(samples_, shard_size_, e);
    std::vector<bool> done(shards.size(), false);
    SHOAL_REQUIRE(parse_int(need(f, "shards"), "shards") == static_cast<std::int64_t>(shards.size()), CheckpointError,
                  "position: epoch " << e << " has another number of shards than " << shards.size());
    const std::string& list = need(f, "done");
    if (list != "-") {
      std::istringstream runs(list);
      std::string run;
      while (std::getline(runs, run, ',')) {
        auto dash = run.find('-');
        std::int64_t a = parse_int(run.substr(0, dash), "shard"),
                     b = dash == std::string::npos ? a : parse_int(run.substr(dash + 1), "shard");
        SHOAL_REQUIRE(a <= b && b < static_cast<std::int64_t>(done.size()), CheckpointError,
                      "position: epoch " << e << " shard run '" << run << "' out of range");
        for (std::int64_t i = a; i <= b; ++i) done[static_cast<std::size_t>(i)] = true;
      }
    }
    EpochReport& r = reports_[e];
    r.epoch = e;
    r.samples_total = samples_;
    r.shards_total = static_cast<std::int64_t>(shards.size());
    r.started = now;
    r.samples_done = parse_int(need(f, "samples_done"), "samples_done");
    r.samples_processed = parse_int(need(f, "processed"), "processed");
    r.shards_released = parse_int(need(f, "released"), "released");
    r.loss_sum = parse_real(need(f, "loss_sum"), "loss_sum");
    r.correct = parse_int(need(f, "correct"), "correct");
    r.evaluated = parse_int(need(f, "evaluated"), "evaluated") != 0;
    r.test_loss = parse_real(need(f, "test_loss"), "test_loss");
    r.test_accuracy = parse_real(need(f, "test_accuracy"), "test_accuracy");
    r.shards_done = static_cast<std::int64_t>(std::count(done.begin(), done.end(), true));
    r.complete = r.shards_done == r.shards_total;
    SHOAL_REQUIRE(!r.evaluated || r.complete, CheckpointError,
                  "position: epoch " << e << " evaluated but not complete");
    if (r.complete) r.completed = now;
    for (const auto& shard : shards)
      if (!done[static_cast<std::size_t>(shard.index)]) queue_.emplace_back(e, shard.index);
    if (r.complete && !r.evaluated) eval_queue_.push_back(e);
    done_[e] = std::move(done);
  }
  opened_ = opened;
  next_report_ = 1;
  while (reports_.count(next_report_) && reports_[next_report_].evaluated)
    evaluated.push_back(reports_[next_report_++]);
  return evaluated;
}

}  // namespace shoal
