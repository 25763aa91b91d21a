// The async worker's device data path, exercised on the CPU: gradients staged through a host
// mirror and pushed only when their copy has landed; pulled parameters staged and copied up.
// A backend whose device-to-host copies land late (on a thread of their own, a few ms after
// they are asked for) stands in for a GPU's copy stream: a push sent before its copy landed
// would carry the previous step's gradients, and the servers' parameters would differ from a
// run without staging, which the test compares bit for bit.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "compute/backend.h"
#include "compute/devices/devices.h"
#include "models/model.h"
#include "ps/farm/server_farm.h"
#include "worker/async_ps.h"

namespace shoal {
namespace {

// The CPU backend with copies to the host deferred to a thread, as a copy stream would run them.
class LateCopyBackend final : public Backend {
 public:
  LateCopyBackend() : cpu_(make_backend(BackendOptions{Device::cpu(), 1})), thread_([this] { run(); }) {}
  ~LateCopyBackend() override {
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  int late_copies() const { return late_copies_; }

  std::shared_ptr<DeviceEvent> copy_to_host_async(const Tensor& src, void* dst) override {
    auto event = std::make_shared<Landing>();
    std::lock_guard lock(mutex_);
    jobs_.push_back([src, dst, event] {
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
      std::memcpy(dst, src.raw(), src.bytes());
      event->land();
    });
    wake_.notify_all();
    ++late_copies_;
    return event;
  }

  Device device() const override { return cpu_->device(); }
  std::string describe() const override { return "late-copy " + cpu_->describe(); }
  Tensor allocate(const Shape& shape, DType dtype) override { return cpu_->allocate(shape, dtype); }
  void copy(const Tensor& src, Tensor& dst) override { cpu_->copy(src, dst); }
  void copy_from_host(const void* src, Tensor& dst) override { cpu_->copy_from_host(src, dst); }
  void copy_to_host(const Tensor& src, void* dst) override { cpu_->copy_to_host(src, dst); }
  void fill(Tensor& t, float value) override { cpu_->fill(t, value); }
  void synchronize() override {}
  void conv2d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y, const Conv2dParams& p) override {
    cpu_->conv2d_forward(x, w, b, y, p);
  }
  void conv2d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx, const Conv2dParams& p) override {
    cpu_->conv2d_backward_data(dy, w, dx, p);
  }
  void conv2d_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db,
                               const Conv2dParams& p) override {
    cpu_->conv2d_backward_weights(x, dy, dw, db, p);
  }
  void linear_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y) override {
    cpu_->linear_forward(x, w, b, y);
  }
  void linear_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    cpu_->linear_backward_data(dy, w, dx);
  }
  void linear_backward_weights(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db) override {
    cpu_->linear_backward_weights(x, dy, dw, db);
  }
  void relu_forward(const Tensor& x, Tensor& y) override { cpu_->relu_forward(x, y); }
  void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) override { cpu_->relu_backward(y, dy, dx); }
  void pool_forward(const Tensor& x, Tensor& y, Tensor& ws, const PoolParams& p, bool training) override {
    cpu_->pool_forward(x, y, ws, p, training);
  }
  void pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Tensor& ws, Tensor& dx,
                     const PoolParams& p) override {
    cpu_->pool_backward(x, y, dy, ws, dx, p);
  }
  void batch_norm_forward_training(const Tensor& x, const Tensor& g, const Tensor& b, Tensor& y, Tensor& rm, Tensor& rv,
                                   Tensor& sm, Tensor& sv, float momentum, float eps) override {
    cpu_->batch_norm_forward_training(x, g, b, y, rm, rv, sm, sv, momentum, eps);
  }
  void batch_norm_forward_inference(const Tensor& x, const Tensor& g, const Tensor& b, const Tensor& rm,
                                    const Tensor& rv, Tensor& y, float eps) override {
    cpu_->batch_norm_forward_inference(x, g, b, rm, rv, y, eps);
  }
  void batch_norm_backward(const Tensor& x, const Tensor& dy, const Tensor& g, const Tensor& sm, const Tensor& sv,
                           Tensor& dx, Tensor& dg, Tensor& db, float eps) override {
    cpu_->batch_norm_backward(x, dy, g, sm, sv, dx, dg, db, eps);
  }
  void dropout_forward(const Tensor& x, Tensor& y, Tensor& mask, float p, std::uint64_t seed,
                       std::uint64_t first) override {
    cpu_->dropout_forward(x, y, mask, p, seed, first);
  }
  void dropout_backward(const Tensor& dy, const Tensor& mask, Tensor& dx) override {
    cpu_->dropout_backward(dy, mask, dx);
  }
  LossStats softmax_cross_entropy(const Tensor& z, const Tensor& y, Tensor* dz, float scale, float smooth) override {
    return cpu_->softmax_cross_entropy(z, y, dz, scale, smooth);
  }
  void clip_forward(const Tensor& x, Tensor& y, float lo, float hi) override { cpu_->clip_forward(x, y, lo, hi); }
  void clip_backward(const Tensor& y, const Tensor& dy, Tensor& dx, float lo, float hi) override {
    cpu_->clip_backward(y, dy, dx, lo, hi);
  }
  void concat_channels(const std::vector<const Tensor*>& parts, Tensor& y) override { cpu_->concat_channels(parts, y); }
  void split_channels(const Tensor& dy, const std::vector<Tensor*>& parts) override { cpu_->split_channels(dy, parts); }
  void add(const Tensor& a, const Tensor& b, Tensor& out) override { cpu_->add(a, b, out); }
  void axpy(float alpha, const Tensor& x, Tensor& y) override { cpu_->axpy(alpha, x, y); }
  void scale(Tensor& x, float alpha) override { cpu_->scale(x, alpha); }
  double sum_squares(const Tensor& x) override { return cpu_->sum_squares(x); }
  bool all_finite(const Tensor& x) override { return cpu_->all_finite(x); }
  void sgd_update(Tensor& w, const Tensor& g, Tensor* v, const SgdHyper& h) override { cpu_->sgd_update(w, g, v, h); }
  void adam_update(Tensor& w, const Tensor& g, Tensor& m, Tensor& v, const AdamHyper& h) override {
    cpu_->adam_update(w, g, m, v, h);
  }

 private:
  class Landing final : public DeviceEvent {
   public:
    void land() {
      std::lock_guard lock(mutex_);
      landed_ = true;
      cv_.notify_all();
    }
    bool ready() override {
      std::lock_guard lock(mutex_);
      return landed_;
    }
    void wait() override {
      std::unique_lock lock(mutex_);
      ASSERT_TRUE(cv_.wait_for(lock, std::chrono::seconds(30), [&] { return landed_; })) << "a copy never landed";
    }

   private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool landed_ = false;
  };

  void run() {
    std::unique_lock lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return quit_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  std::unique_ptr<Backend> cpu_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool quit_ = false;
  int late_copies_ = 0;
  std::thread thread_;
};

// Runs `steps` steps of made-up gradients through one worker and two servers (chunks of 100
// elements, so every parameter spans several) and returns the parameters pulled at the end.
std::vector<float> train(Backend& backend, bool staged, int steps) {
  auto model = std::make_unique<Model>("two-layer", Shape{1, 1, 30}, 10);
  model->add("fc1", linear(30, 20));
  model->add("fc2", linear(20, 10));
  model->build(backend, 7);
  ServerOptions server;
  server.staleness = 0;
  server.optimizer.momentum = 0.9f;
  server.schedule.base_lr = 0.1f;
  ServerFarm farm(2, model->params().parameter_count(), 100, 0.25f, "test.worker", server);
  Network network;
  AsyncPsOptions options;
  options.stage_through_host = staged;
  options.client.request_timeout = Seconds(30);
  AsyncPsStrategy strategy(network, farm.table(), "test.worker", backend, *model, Logger("worker", LogLevel::warn),
                           options);
  const auto& params = model->params().parameters();
  for (int step = 0; step < steps; ++step) {
    strategy.begin_step(*model, step);
    // "Backward": the last parameter's gradient is final first; each is announced once written.
    for (auto p = params.rbegin(); p != params.rend(); ++p) {
      float* g = (*p)->grad.data<float>();
      const float* w = (*p)->value.data<float>();
      for (std::int64_t i = 0; i < (*p)->grad.numel(); ++i)
        g[i] = std::sin(0.37f * static_cast<float>(step + 1) + 0.011f * static_cast<float>(i)) + 0.5f * w[i];
      strategy.gradients_ready(*model, {p->get()});
    }
    strategy.end_step(*model, step, 0.1f);
  }
  strategy.await_parameters();
  const Tensor& values = model->params().values();
  return std::vector<float>(values.data<float>(), values.data<float>() + values.numel());
}

TEST(AsyncStaging, PushesWaitForTheirCopyAndTrainExactlyAsWithoutStaging) {
  const int steps = 12;
  auto cpu = make_backend(BackendOptions{Device::cpu(), 1});
  std::vector<float> direct = train(*cpu, false, steps);
  LateCopyBackend late;
  std::vector<float> staged = train(late, true, steps);
  // Each parameter's backward finishes a new range (2 per step), plus none at end_step.
  EXPECT_GE(late.late_copies(), 2 * steps);
  ASSERT_EQ(direct.size(), staged.size());
  for (std::size_t i = 0; i < direct.size(); ++i) ASSERT_EQ(direct[i], staged[i]) << "parameter element " << i;
  // And training moved them (the comparison is not between two untouched copies).
  int moved = 0;
  for (float v : direct) moved += v != 0.25f;
  EXPECT_GT(moved, static_cast<int>(direct.size()) / 2);
}

}  // namespace
}  // namespace shoal
