// Talking to the coordinator: registration, the partition table, leases and results, and a
// background heartbeat that keeps this process alive in the coordinator's eyes and brings back
// the live-worker set and the shutdown signal. Used by parameter servers and workers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/log.h"
#include "core/partition.h"
#include "core/transport.h"

namespace shoal {

using Seconds = std::chrono::duration<double>;

struct LeaseTask {
  enum Kind { shard, evaluate, wait, finished } kind = wait;
  std::int64_t epoch = 0, index = 0, begin = 0, end = 0;
  std::uint32_t wait_ms = 0;
};

class ControlClient {
 public:
  ControlClient(zmq::context_t& context, const std::string& coordinator, std::string sender, Logger log,
                Seconds request_timeout);

  // Registers (retrying until `deadline` passes while the coordinator is not up yet) and
  // adopts the id the coordinator assigns. Throws TimeoutError or ProtocolError.
  std::string register_node(wire::Role role, int rank, const std::string& address, Seconds deadline);
  // Waits until the coordinator publishes the partition table.
  PartitionTable fetch_table(Seconds deadline);
  LeaseTask request_lease();
  void report_shard(std::int64_t epoch, std::int64_t index, std::int64_t samples, double loss_sum, std::int64_t correct,
                    double seconds);
  void report_evaluation(std::int64_t epoch, double loss, double accuracy, std::int64_t samples);
  // This worker leaves the job before it is over (SIGTERM): its leases go back at once.
  void leave();
  const std::string& id() const { return sender_; }

  // One request and its reply (matched by request id; stray replies are discarded). An error
  // reply becomes the returned message; no reply in time throws TimeoutError.
  Incoming request(Outgoing& message, Seconds timeout);
  Outgoing make(std::uint64_t* request_id = nullptr);

 private:
  ClientSocket socket_;
  std::string sender_;
  Logger log_;
  Seconds timeout_;
  std::uint64_t next_request_ = 1;
};

// Heartbeats from a background thread with its own socket.
class Heartbeat {
 public:
  Heartbeat(zmq::context_t& context, const std::string& coordinator, const std::string& sender, Logger log,
            Seconds interval, Seconds dead_after);
  ~Heartbeat();  // stops the thread

  void set_clock(std::uint64_t clock) { clock_ = clock; }
  std::uint64_t generation() const { return generation_; }
  std::vector<std::string> live_workers() const;
  bool shutdown_requested() const { return shutdown_; }
  bool coordinator_lost() const { return lost_; }
  std::string shutdown_reason() const;

 private:
  void loop(std::string coordinator, std::string sender, Seconds interval, Seconds dead_after);

  zmq::context_t& context_;
  Logger log_;
  std::atomic<bool> stop_{false}, shutdown_{false}, lost_{false};
  std::atomic<std::uint64_t> clock_{0}, generation_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> live_workers_;
  std::string reason_;
  std::thread thread_;
};

}  // namespace shoal
