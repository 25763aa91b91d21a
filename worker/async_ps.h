// The asynchronous parameter-server strategy of a worker: the training loop's hooks on top of
// the parameter servers' client (ps/client/ps_client.h). Per step: wait for the parameters
// pulled at the end of the previous step, forward/backward, push each chunk of gradients as
// soon as backward has produced it (while the earlier layers are still computing), and right
// after the last push ask for the parameters of the next step (a server answers a connection's
// messages in order, so the reply carries this step's updates). Gradient frames are sent
// zero-copy from the gradient arena, which is why the next step waits for every
// acknowledgement, with the pulled parameters, before backward may overwrite it.
//
// On a GPU the model lives in device memory and the wire needs host bytes: each range of
// gradients that backward finishes is copied to a pinned host mirror on the backend's copy
// stream (ordered after the kernels that produced it) and pushed as soon as that copy lands,
// while backward goes on; pulled chunks are written into a pinned mirror of the parameters
// and copied up once, before the next forward.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "comm/partition.h"
#include "comm/transport.h"
#include "ps/client/ps_client.h"
#include "worker/distributed.h"

namespace shoal {

struct AsyncPsOptions {
  // The in-flight window, deadlines, the job's watch, the clock's listener and metrics.
  PsClientOptions client;
  // When it turns true, a wait for parameters ends at once with StopRequested. A wait for
  // push acknowledgements does not: the step is finished first (bounded by request_timeout).
  const std::atomic<bool>* stop = nullptr;
  // Stage through host mirrors even on the CPU (tests of the device path; a GPU always does).
  bool stage_through_host = false;
};

class AsyncPsStrategy final : public DistributedStrategy {
 public:
  AsyncPsStrategy(Network& network, const PartitionTable& table, std::string worker_id, Backend& backend, Model& model,
                  Logger log, AsyncPsOptions options);

  void begin_step(Model& model, std::int64_t step) override;
  void gradients_ready(Model& model, const std::vector<Parameter*>& params) override;
  void end_step(Model& model, std::int64_t step, float lr) override;
  bool sends_raw_gradients() const override { return true; }

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
  std::uint64_t clock() const override { return client_.clock(); }

  void before_task() override { await_parameters(); }
  void idle() override { idle_step(); }
  LossStats train(Trainer& trainer, const DataSource& data, const std::vector<std::int64_t>& order,
                  const DataShard& shard) override {
    return trainer.train_shard(data, order, shard);
  }
  EvalResult evaluate(Trainer& trainer, const DataSource& test) override { return trainer.evaluate(test); }
  std::string describe() const override;

 private:
  // Waits for every push acknowledgement, moves the clock and asks for the next parameters.
  void finish_step();
  // Where pulled chunks are written: the parameter arena, or its host mirror on a device.
  float* pull_target();
  // Where pushes read gradients: the gradient arena, or its host mirror on a device.
  PushSource push_source() const;
  // Pushes the staged gradient ranges whose copy to the host has landed (all: waits for each).
  void push_staged(bool all);
  // Pushes every server's part of `per_server` (keys by server).
  void push_to_servers(const std::vector<std::vector<std::uint32_t>>& per_server);

  // Gradients of one range on their way to the host mirror, and the chunks they complete.
  struct StagedCopy {
    std::shared_ptr<DeviceEvent> landed;
    std::vector<std::vector<std::uint32_t>> per_server;
  };

  Backend& backend_;
  Model& model_;
  Logger log_;
  const std::atomic<bool>* stop_;
  bool fresh_ = false;
  std::size_t pushed_from_ = 0;  // chunks [pushed_from_, end) pushed this step
  std::int64_t ready_offset_ = 0;
  // Set when the parameters live on a device: the host mirrors and what is in flight there.
  bool staged_ = false;
  Tensor host_values_, host_grads_;
  std::shared_ptr<DeviceEvent> upload_;  // host_values_ -> device, before the next forward
  std::deque<StagedCopy> copies_;
  // Last: its pull target reads the members above.
  PsClient client_;
};

}  // namespace shoal
