// Helper threads for a parameter server's updates: run(n, body) calls body(0) ... body(n - 1)
// spread over the helpers and the calling thread, and returns once every call has returned
// (rethrowing the first exception one threw). Plain threads, not OpenMP: the backend's own
// OpenMP loops stay out of it (the server's backend runs each loop on the calling thread), and
// ThreadSanitizer sees the hand-over.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace shoal {

class UpdatePool {
 public:
  explicit UpdatePool(int threads);  // threads - 1 helpers: the caller of run() is one of them
  ~UpdatePool();
  UpdatePool(const UpdatePool&) = delete;
  UpdatePool& operator=(const UpdatePool&) = delete;

  int threads() const { return static_cast<int>(helpers_.size()) + 1; }
  void run(std::int64_t n, const std::function<void(std::int64_t)>& body);

 private:
  void helper();
  // Takes indices until none is left; false once an exception was recorded.
  void work(std::unique_lock<std::mutex>& lock);

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(std::int64_t)>* body_ = nullptr;
  std::int64_t next_ = 0, end_ = 0;
  int running_ = 0;               // calls in progress
  std::uint64_t generation_ = 0;  // one per run(), so a helper joins each at most once
  std::exception_ptr failed_;
  bool quit_ = false;
  std::vector<std::thread> helpers_;
};

}  // namespace shoal
