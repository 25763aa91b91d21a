// The input pipeline: `threads` threads decode and transform the samples of upcoming batches
// into a bounded ring of ready batches, while the training step runs. At most `prefetch`
// batches are loaded ahead of the one the trainer holds, so memory is bounded by
// (prefetch + 1) x batch x sample size, whatever the size of the data set. With threads = 0 the
// trainer's own thread loads each batch when it asks for it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "compute/tensor.h"
#include "data/source.h"

namespace shoal {

class BatchLoader {
 public:
  // Allocates a batch buffer (pinned host memory for a GPU's uploads); null: Tensor::zeros.
  using Allocate = std::function<Tensor(const Shape&, DType)>;
  BatchLoader(std::int64_t threads, std::int64_t prefetch, Allocate allocate = nullptr);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  struct Request {
    const DataSource* source = nullptr;
    std::span<const std::int64_t> samples;  // kept alive by the caller until the batch is taken or cancelled
    SampleContext ctx;
  };
  // Loads these batches, in order, from now on (what was pending is cancelled first).
  void start(std::vector<Request> batches);
  bool has_next() const;

  struct Batch {
    Tensor x, y;              // [count, C, H, W] floats, [count] labels; valid until the next call
    std::int64_t count = 0;   // samples loaded (requested minus skipped bad samples)
    std::int64_t skipped = 0;
    double wait_seconds = 0;  // how long the caller waited for it
  };
  // The next batch, waiting until it is ready; rethrows what loading it threw.
  Batch next();
  // Drops the pending batches and waits for loads in progress to end.
  void cancel();

  std::int64_t threads() const { return static_cast<std::int64_t>(workers_.size()); }

 private:
  struct Slot {
    std::int64_t batch = -1;
    Tensor x, y;
    std::vector<char> ok;
    std::int64_t remaining = 0;
    std::exception_ptr error;
  };
  void prepare(Slot& slot, std::int64_t batch);
  void load_range(const Request& r, Slot& slot, std::int64_t from, std::int64_t to);
  void work();

  Allocate allocate_;
  const std::int64_t prefetch_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_, ready_cv_, idle_cv_;
  std::vector<Request> requests_;
  std::vector<Slot> slots_;
  std::int64_t returned_ = 0;     // batches handed to the caller
  std::int64_t fill_batch_ = 0;   // the batch whose samples workers take next
  std::int64_t fill_sample_ = 0;  // ... from this sample on
  std::int64_t in_flight_ = 0;    // loads running outside the lock
  std::uint64_t generation_ = 0;  // bumped by cancel: loads of an older generation are dropped
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace shoal
