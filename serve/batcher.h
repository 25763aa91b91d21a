// Dynamic batching for `shoal serve`: requests wait in a bounded queue; one thread takes the
// oldest, gathers more for up to max_delay (until max_batch samples) while requests are arriving
// together, runs them through the model as one batch and answers each with its own rows. A
// lone request runs at once; under load, what arrives while the model runs is the next batch. A request runs on the model that was current
// when it was submitted, so a hot swap never changes a request in flight; a request whose
// deadline passes while it waits is answered `expired` without running.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serve/inference.h"
#include "telemetry/telemetry.h"

namespace shoal {

struct BatcherOptions {
  std::int64_t max_batch = 32;     // samples per model call (a larger request runs alone)
  std::int64_t max_delay_us = 2000;  // how long the oldest request may wait for company
  std::int64_t queue_limit = 256;  // requests waiting; beyond it submit() refuses (429)
  // false: the oldest waits for company only while requests arrive together (the last batch
  // held several, or several wait now), so a lone request runs at once; true: always.
  bool always_wait = false;
};

struct InferenceResult {
  enum class Status { ok, expired, failed } status = Status::ok;
  std::string error;          // failed: why
  std::vector<float> logits;  // ok: n x classes
  std::shared_ptr<InferenceModel> model;  // the model that answered (its metadata for the reply)
};

struct InferenceJob {
  std::vector<float> input;  // n x sample_size
  std::int64_t n = 0;
  std::chrono::steady_clock::time_point deadline;
  std::function<void(InferenceResult&&)> done;  // called once, on the batcher's thread (or submit's)
};

class Batcher {
 public:
  Batcher(BatcherOptions options, std::shared_ptr<InferenceModel> model, MetricsRegistry& metrics);
  ~Batcher();  // answers every waiting job `failed` ("shutting down") and joins the thread
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues the job on the current model; false (job untouched) when the queue is full.
  bool submit(InferenceJob& job);
  void set_model(std::shared_ptr<InferenceModel> model);
  std::shared_ptr<InferenceModel> model() const;
  std::int64_t depth() const;  // requests waiting or running
  // Waits until nothing is waiting or running, or until `deadline`; true when idle.
  bool wait_idle(std::chrono::steady_clock::time_point deadline);

 private:
  struct Entry {
    InferenceJob job;
    std::shared_ptr<InferenceModel> model;
  };
  void run();

  BatcherOptions options_;
  mutable std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::deque<Entry> queue_;
  std::shared_ptr<InferenceModel> model_;
  std::int64_t running_ = 0;
  std::size_t last_requests_ = 0;  // requests in the last batch
  bool stop_ = false;
  Gauge& depth_gauge_;
  Histogram& batch_sizes_;
  Histogram& compute_seconds_;
  std::thread thread_;
};

}  // namespace shoal
