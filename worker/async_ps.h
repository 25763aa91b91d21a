// The asynchronous parameter-server strategy of a worker. Per step: wait for the parameters
// pulled at the end of the previous step, forward/backward, push each chunk of gradients as
// soon as backward has produced it (while the earlier layers are still computing), and right
// after the last push issue the pull for the next step (a server answers a connection's
// messages in order, so the reply carries this step's updates). Gradient frames are sent
// zero-copy from the gradient arena, which is why the next step waits for every
// acknowledgement, with the pulled parameters, before backward may overwrite it. At most `max_in_flight` pushes per
// server are unacknowledged; every wait has a deadline.
//
// On a GPU the model lives in device memory and the wire needs host bytes: each range of
// gradients that backward finishes is copied to a pinned host mirror on the backend's copy
// stream (ordered after the kernels that produced it) and pushed as soon as that copy lands,
// while backward goes on; pulled chunks are written into a pinned mirror of the parameters
// and copied up once, before the next forward.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "coordinator/client/control_client.h"
#include "comm/partition.h"
#include "telemetry/telemetry.h"
#include "comm/transport.h"
#include "worker/distributed.h"

namespace shoal {

struct AsyncPsOptions {
  int max_in_flight = 8;
  Seconds request_timeout{60.0};
  Seconds startup_timeout{120.0};  // pulls refused as "not ready" are retried this long
  // When it turns true, a wait for parameters ends at once with StopRequested. A wait for
  // push acknowledgements does not: the step is finished first (bounded by request_timeout).
  const std::atomic<bool>* stop = nullptr;
  // Called at least every 10 ms of every wait; throws to end it (the job failed, the
  // coordinator is gone), so a worker waiting on a dead server hears the job's end at once.
  std::function<void()> watch;
  // Called with the new clock after every step (the heartbeat carries it: progress the
  // coordinator can see, cluster.stall_seconds).
  std::function<void(std::uint64_t)> on_clock;
  // Stage through host mirrors even on the CPU (tests of the device path; a GPU always does).
  bool stage_through_host = false;
  // Per server: bytes pushed and pulled, and the round trips of pushes and pulls.
  MetricsRegistry* metrics = nullptr;
};

class AsyncPsStrategy final : public DistributedStrategy {
 public:
  AsyncPsStrategy(Network& network, const PartitionTable& table, std::string worker_id, Backend& backend, Model& model,
                  Logger log, AsyncPsOptions options);

  void begin_step(Model& model, std::int64_t step) override;
  void gradients_ready(Model& model, const std::vector<Parameter*>& params) override;
  void end_step(Model& model, std::int64_t step, float lr) override;

  // Makes sure the model holds the parameters for the next step (waits for the pull).
  void await_parameters();
  // No data for this step: tell the servers, so workers that have data are not held back.
  void idle_step();
  // This worker is done: it stops taking part in the servers' clocks.
  void leave() override;
  // A new partition table (a parameter server was restarted elsewhere): drops every
  // connection and what was in flight on it, connects to the table's servers and pulls the
  // parameters again before the next step. The clock goes on.
  void retarget(Network& network, const PartitionTable& table);
  std::uint64_t clock() const override { return clock_; }

  void before_task() override { await_parameters(); }
  void idle() override { idle_step(); }
  LossStats train(Trainer& trainer, const Dataset& data, const std::vector<std::int64_t>& order,
                  const DataShard& shard) override {
    return trainer.train_shard(data, order, shard);
  }
  EvalResult evaluate(Trainer& trainer, const Dataset& test) override { return trainer.evaluate(test); }
  std::string describe() const override;

 private:
  struct Link {
    std::string id, address;
    std::unique_ptr<ClientSocket> socket;
    std::vector<std::uint32_t> keys;
    int in_flight = 0;
    std::optional<std::uint64_t> pull_id;  // outstanding pull of every chunk
    // Pushes that asked for their chunks back (pullAfter): request id -> chunks still owed.
    std::map<std::uint64_t, std::size_t> push_pulls;
    std::set<std::uint32_t> pulled;  // chunks of the next parameters received so far
    bool pull_bounded = true;
    bool asked = false;  // this step's pushes asked for every chunk back: no pull needed
    std::chrono::steady_clock::time_point retry_at{};
    // Round trips: when each push (by request id) and the outstanding pull were sent.
    std::map<std::uint64_t, std::chrono::steady_clock::time_point> push_sent;
    std::chrono::steady_clock::time_point pull_sent{};
    Counter* push_bytes = nullptr;  // null without options.metrics
    Counter* pull_bytes = nullptr;
    Histogram* push_seconds = nullptr;
    Histogram* pull_seconds = nullptr;
    void push_answered(std::uint64_t request_id);
  };

  void connect(Network& network);
  // A send waits at most the request timeout for room, watching the job meanwhile (a server
  // that died leaves its queue full).
  std::chrono::milliseconds send_timeout() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(options_.request_timeout);
  }
  void send_pull(Link& link, bool bounded);
  // Waits for every push acknowledgement, moves the clock and asks for the next parameters.
  void finish_step();
  // pull_after: the step's last push to this server, which also asks for the next parameters.
  void push(std::size_t server, const std::vector<std::uint32_t>& keys, bool pull_after = false);
  // Pushes `keys` in as few messages as kCoalesceBytes allows.
  void push_all(std::size_t server, const std::vector<std::uint32_t>& keys);
  // Handles replies until `done()` holds; throws TimeoutError at the deadline.
  template <typename Done>
  void pump_until(Done done, const char* waiting_for, bool stoppable = false);
  void handle_reply(Link& link, Incoming& in);
  // Where pulled chunks are written: the parameter arena, or its host mirror on a device.
  float* pull_target();
  // Pushes the staged gradient ranges whose copy to the host has landed (all: waits for each).
  void push_staged(bool all);

  // Gradients of one range on their way to the host mirror, and the chunks they complete.
  struct StagedCopy {
    std::shared_ptr<DeviceEvent> landed;
    std::vector<std::vector<std::uint32_t>> per_server;
  };

  PartitionTable table_;
  std::string id_;
  Backend& backend_;
  Model& model_;
  Logger log_;
  AsyncPsOptions options_;
  std::vector<Link> links_;
  std::vector<std::size_t> owner_;  // key -> link
  std::uint64_t clock_ = 0;
  std::uint64_t next_request_ = 1;
  bool fresh_ = false;
  std::size_t pushed_from_ = 0;  // chunks [pushed_from_, end) pushed this step
  std::int64_t ready_offset_ = 0;
  // Set when the parameters live on a device: the host mirrors and what is in flight there.
  bool staged_ = false;
  Tensor host_values_, host_grads_;
  std::shared_ptr<DeviceEvent> upload_;  // host_values_ -> device, before the next forward
  std::deque<StagedCopy> copies_;
};

}  // namespace shoal
