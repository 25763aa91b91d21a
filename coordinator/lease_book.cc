#include "coordinator/lease_book.h"

#include "core/error.h"

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
                         double /*seconds*/, TimePoint now) {
  auto d = done_.find(epoch);
  if (d == done_.end() || index < 0 || index >= static_cast<std::int64_t>(d->second.size())) return false;
  EpochReport& r = reports_[epoch];
  r.samples_processed += stats.samples;
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

}  // namespace shoal
