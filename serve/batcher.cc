#include "serve/batcher.h"

#include <algorithm>
#include <exception>
#include <limits>

namespace shoal {

Batcher::Batcher(BatcherOptions options, std::shared_ptr<InferenceModel> model, MetricsRegistry& metrics)
    : options_(options),
      model_(std::move(model)),
      depth_gauge_(metrics.gauge("shoal_serve_queue_depth", "inference requests waiting or running")),
      batch_sizes_(metrics.histogram("shoal_serve_batch_size", "samples per model call",
                                     {1, 2, 4, 8, 16, 32, 64, 128, 256})),
      compute_seconds_(metrics.histogram("shoal_serve_compute_seconds", "seconds per model call", latency_buckets())) {
  thread_ = std::thread([this] { run(); });
}

Batcher::~Batcher() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
  for (Entry& e : queue_) {
    InferenceResult r;
    r.status = InferenceResult::Status::failed;
    r.error = "the server is shutting down";
    e.job.done(std::move(r));
  }
}

bool Batcher::submit(InferenceJob& job) {
  {
    std::lock_guard lock(mu_);
    if (static_cast<std::int64_t>(queue_.size()) >= options_.queue_limit || stop_) return false;
    queue_.push_back(Entry{std::move(job), model_});
    depth_gauge_.set(static_cast<double>(queue_.size() + static_cast<std::size_t>(running_)));
  }
  wake_.notify_one();
  return true;
}

void Batcher::set_model(std::shared_ptr<InferenceModel> model) {
  std::lock_guard lock(mu_);
  model_ = std::move(model);
}

std::shared_ptr<InferenceModel> Batcher::model() const {
  std::lock_guard lock(mu_);
  return model_;
}

std::int64_t Batcher::depth() const {
  std::lock_guard lock(mu_);
  return static_cast<std::int64_t>(queue_.size()) + running_;
}

bool Batcher::wait_idle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mu_);
  return idle_.wait_until(lock, deadline, [&] { return queue_.empty() && running_ == 0; });
}

void Batcher::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    // Gather: the oldest request waits up to max_delay for others on the same model while
    // requests arrive together: until as many wait as the last batch held (n clients that each
    // send again once answered make batches of n, and none waits for an n+1st that is not
    // coming), or max_batch samples. Always until max_batch or max_delay, when so configured.
    const std::size_t expect = options_.always_wait ? std::numeric_limits<std::size_t>::max() : last_requests_;
    const bool gather = options_.always_wait || last_requests_ > 1 || queue_.size() > 1;
    const auto gather_until = std::chrono::steady_clock::now() + std::chrono::microseconds(options_.max_delay_us);
    auto samples_ready = [&] {
      std::int64_t n = 0;
      for (const Entry& e : queue_) {
        if (e.model != queue_.front().model) break;
        n += e.job.n;
      }
      return n;
    };
    while (gather && !stop_ && samples_ready() < options_.max_batch && queue_.size() < std::max<std::size_t>(expect, 2) &&
           wake_.wait_until(lock, gather_until) != std::cv_status::timeout) {
    }
    if (stop_) return;
    std::vector<Entry> batch;
    std::int64_t n = 0;
    const auto now = std::chrono::steady_clock::now();
    std::vector<Entry> expired;
    while (!queue_.empty()) {
      Entry& e = queue_.front();
      if (e.job.deadline < now) {
        expired.push_back(std::move(e));
        queue_.pop_front();
        continue;
      }
      if (!batch.empty() && (e.model != batch.front().model || n + e.job.n > options_.max_batch)) break;
      n += e.job.n;
      batch.push_back(std::move(e));
      queue_.pop_front();
    }
    running_ = static_cast<std::int64_t>(batch.size());
    last_requests_ = batch.size();
    lock.unlock();

    for (Entry& e : expired) {
      InferenceResult r;
      r.status = InferenceResult::Status::expired;
      e.job.done(std::move(r));
    }
    if (!batch.empty()) {
      const std::shared_ptr<InferenceModel>& model = batch.front().model;
      const std::int64_t size = model->sample_size(), classes = model->classes();
      std::vector<float> x;
      const float* input = batch.front().job.input.data();
      if (batch.size() > 1) {
        x.reserve(static_cast<std::size_t>(n * size));
        for (const Entry& e : batch) x.insert(x.end(), e.job.input.begin(), e.job.input.end());
        input = x.data();
      }
      std::vector<float> logits(static_cast<std::size_t>(n * classes));
      std::string error;
      const auto started = std::chrono::steady_clock::now();
      try {
        model->predict(input, n, logits.data());
      } catch (const std::exception& ex) {
        error = ex.what();
      }
      compute_seconds_.observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
      batch_sizes_.observe(static_cast<double>(n));
      std::int64_t row = 0;
      for (Entry& e : batch) {
        InferenceResult r;
        r.model = e.model;
        if (!error.empty()) {
          r.status = InferenceResult::Status::failed;
          r.error = error;
        } else {
          r.logits.assign(logits.begin() + row * classes, logits.begin() + (row + e.job.n) * classes);
        }
        row += e.job.n;
        e.job.done(std::move(r));
      }
    }
    lock.lock();
    running_ = 0;
    depth_gauge_.set(static_cast<double>(queue_.size()));
    if (queue_.empty()) idle_.notify_all();
  }
}

}  // namespace shoal
