#include "data/loader.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "base/error.h"

namespace shoal {

BatchLoader::BatchLoader(std::int64_t threads, std::int64_t prefetch, Allocate allocate)
    : allocate_(std::move(allocate)), prefetch_(std::max<std::int64_t>(1, prefetch)) {
  if (!allocate_) allocate_ = [](const Shape& s, DType t) { return Tensor::zeros(s, t); };
  slots_.resize(static_cast<std::size_t>(threads > 0 ? prefetch_ + 1 : 1));
  for (std::int64_t t = 0; t < threads; ++t) workers_.emplace_back([this] { work(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    ++generation_;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void BatchLoader::cancel() {
  std::unique_lock<std::mutex> lock(mu_);
  ++generation_;
  requests_.clear();
  returned_ = fill_batch_ = fill_sample_ = 0;
  for (Slot& s : slots_) s.batch = -1;
  // Loads in progress write into the slots' buffers: they must end before the slots are reused.
  idle_cv_.wait(lock, [&] { return in_flight_ == 0; });
}

void BatchLoader::start(std::vector<Request> batches) {
  cancel();
  {
    std::lock_guard<std::mutex> lock(mu_);
    requests_ = std::move(batches);
  }
  work_cv_.notify_all();
}

bool BatchLoader::has_next() const {
  std::lock_guard<std::mutex> lock(mu_);
  return returned_ < static_cast<std::int64_t>(requests_.size());
}

// Under the lock: slot buffers large enough for `batch`.
void BatchLoader::prepare(Slot& slot, std::int64_t batch) {
  const Request& r = requests_[static_cast<std::size_t>(batch)];
  const DatasetInfo& info = r.source->info();
  const auto n = static_cast<std::int64_t>(r.samples.size());
  const std::int64_t size = r.source->sample_size();
  if (!slot.x.defined() || slot.x.numel() < n * size || slot.y.numel() < n) {
    const std::int64_t cap = std::max<std::int64_t>(n, 1);
    slot.x = allocate_(Shape{cap, info.channels, info.height, info.width}, DType::f32);
    slot.y = allocate_(Shape{cap}, DType::i32);
  }
  slot.batch = batch;
  slot.remaining = n;
  slot.ok.assign(static_cast<std::size_t>(n), 0);
  slot.error = nullptr;
}

void BatchLoader::load_range(const Request& r, Slot& slot, std::int64_t from, std::int64_t to) {
  const std::int64_t size = r.source->sample_size();
  float* x = static_cast<float*>(slot.x.raw());
  auto* y = static_cast<std::int32_t*>(slot.y.raw());
  for (std::int64_t s = from; s < to; ++s)
    slot.ok[static_cast<std::size_t>(s)] = r.source->load(r.samples[static_cast<std::size_t>(s)], r.ctx, x + s * size, y + s) ? 1 : 0;
}

void BatchLoader::work() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] {
      return stop_ || (fill_batch_ < static_cast<std::int64_t>(requests_.size()) && fill_batch_ < returned_ + prefetch_);
    });
    if (stop_) return;
    const std::int64_t b = fill_batch_;
    Slot& slot = slots_[static_cast<std::size_t>(b % static_cast<std::int64_t>(slots_.size()))];
    const Request r = requests_[static_cast<std::size_t>(b)];
    const auto n = static_cast<std::int64_t>(r.samples.size());
    std::exception_ptr error;
    if (fill_sample_ == 0) {
      try {
        prepare(slot, b);
      } catch (...) {
        error = std::current_exception();
        slot.batch = b;
        slot.remaining = n;
        slot.ok.assign(static_cast<std::size_t>(n), 0);
      }
    }
    // A few samples at a time: the lock is taken once per chunk, and a batch is shared by every thread.
    const std::int64_t from = fill_sample_, to = std::min(n, from + 4);
    fill_sample_ = to;
    if (to == n) {
      ++fill_batch_;
      fill_sample_ = 0;
    }
    const std::uint64_t generation = generation_;
    ++in_flight_;
    lock.unlock();
    if (!error) {
      try {
        load_range(r, slot, from, to);
      } catch (...) {
        error = std::current_exception();
      }
    }
    lock.lock();
    --in_flight_;
    if (generation == generation_ && slot.batch == b) {
      if (error && !slot.error) slot.error = error;
      slot.remaining -= to - from;
      if (slot.remaining <= 0) ready_cv_.notify_all();
    }
    if (in_flight_ == 0) idle_cv_.notify_all();
  }
}

BatchLoader::Batch BatchLoader::next() {
  const auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  const std::int64_t b = returned_;
  SHOAL_ASSERT(b < static_cast<std::int64_t>(requests_.size()), "BatchLoader::next past the last batch");
  Slot& slot = slots_[static_cast<std::size_t>(b % static_cast<std::int64_t>(slots_.size()))];
  const Request& r = requests_[static_cast<std::size_t>(b)];
  if (workers_.empty()) {  // no threads: load here
    prepare(slot, b);
    lock.unlock();
    load_range(r, slot, 0, static_cast<std::int64_t>(r.samples.size()));
    lock.lock();
    slot.remaining = 0;
  } else {
    ready_cv_.wait(lock, [&] { return slot.batch == b && slot.remaining <= 0; });
  }
  ++returned_;
  lock.unlock();
  work_cv_.notify_all();  // a slot's turn came: the window moves on
  if (slot.error) std::rethrow_exception(slot.error);

  Batch out;
  const std::int64_t size = r.source->sample_size();
  const auto n = static_cast<std::int64_t>(r.samples.size());
  float* x = static_cast<float*>(slot.x.raw());
  auto* y = static_cast<std::int32_t*>(slot.y.raw());
  std::int64_t kept = 0;
  for (std::int64_t s = 0; s < n; ++s) {  // skipped bad samples: close the gaps
    if (!slot.ok[static_cast<std::size_t>(s)]) continue;
    if (kept != s) {
      std::memmove(x + kept * size, x + s * size, static_cast<std::size_t>(size) * sizeof(float));
      y[kept] = y[s];
    }
    ++kept;
  }
  const DatasetInfo& info = r.source->info();
  out.x = Tensor::borrow(x, Shape{kept, info.channels, info.height, info.width}, DType::f32, slot.x.device());
  out.y = Tensor::borrow(y, Shape{kept}, DType::i32, slot.y.device());
  out.count = kept;
  out.skipped = n - kept;
  out.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace shoal
