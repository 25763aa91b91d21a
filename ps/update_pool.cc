#include "ps/update_pool.h"

namespace shoal {

UpdatePool::UpdatePool(int threads) {
  for (int i = 1; i < threads; ++i) helpers_.emplace_back([this] { helper(); });
}

UpdatePool::~UpdatePool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
  }
  wake_.notify_all();
  for (auto& t : helpers_) t.join();
}

void UpdatePool::work(std::unique_lock<std::mutex>& lock) {
  while (next_ < end_ && !failed_) {
    std::int64_t i = next_++;
    ++running_;
    lock.unlock();
    std::exception_ptr error;
    try {
      (*body_)(i);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    if (error && !failed_) failed_ = error;
    --running_;
  }
  if (running_ == 0) done_.notify_all();
}

void UpdatePool::helper() {
  std::unique_lock<std::mutex> lock(mutex_);
  std::uint64_t seen = 0;
  while (true) {
    wake_.wait(lock, [&] { return quit_ || (generation_ != seen && next_ < end_); });
    if (quit_) return;
    seen = generation_;
    work(lock);
  }
}

void UpdatePool::run(std::int64_t n, const std::function<void(std::int64_t)>& body) {
  std::unique_lock<std::mutex> lock(mutex_);
  body_ = &body;
  next_ = 0;
  end_ = n;
  failed_ = nullptr;
  ++generation_;
  if (n > 1) wake_.notify_all();
  work(lock);
  done_.wait(lock, [&] { return running_ == 0 && (next_ >= end_ || failed_); });
  body_ = nullptr;
  end_ = 0;
  if (failed_) std::rethrow_exception(failed_);
}

}  // namespace shoal
