// A parameter-server shard (`shoal ps`): owns a contiguous key range of the partition table,
// keeps the values and optimizer state of its chunks, applies every pushed gradient with the
// job's optimizer (the same code the single-process trainer runs) and answers pulls.
//
// Bounded staleness: a pull from a worker about to compute step c waits while c is more than
// `async.staleness` steps ahead of the slowest live worker. Staleness 0 is bulk-synchronous:
// the gradients of step c are summed until every live worker has pushed it, then averaged
// and applied once, and pulls for step c + 1 wait for that. Parked pulls are answered as soon
// as they may be, or with a timeout error; nothing waits forever.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "core/backend.h"
#include "core/config.h"
#include "core/log.h"
#include "core/optimizer.h"
#include "core/partition.h"
#include "core/transport.h"

namespace shoal {

struct ServerOptions {
  std::int64_t staleness = 2;
  std::chrono::milliseconds pull_timeout{60000};
  OptimizerConfig optimizer;
  LrSchedule schedule;
};

struct ServerStats {
  std::uint64_t pushes = 0, pulls = 0, updates = 0, parked = 0, pull_timeouts = 0;
};

class ParameterServer {
 public:
  ParameterServer(Network& network, const std::string& bind_address, Backend& backend, Logger log);

  const std::string& endpoint() const { return socket_.endpoint(); }
  const std::string& id() const { return id_; }
  const ProtocolCounters& counters() const { return socket_.counters(); }
  const ServerStats& stats() const { return stats_; }

  // Takes ownership of the keys of table.servers[index], starting from `initial` (the whole
  // flat parameter arena; only this server's part is read).
  void start(const std::string& id, const PartitionTable& table, std::size_t index, const float* initial,
             const ServerOptions& options);
  // Handles messages for up to `timeout`; returns after the first batch of work.
  void serve(std::chrono::milliseconds timeout);
  // The workers taking part in clocks (from the coordinator's heartbeats).
  void set_live_workers(const std::vector<std::string>& workers);
  // Copies this server's current values into `arena` (the whole flat arena).
  void read_values(float* arena) const;

  // The whole role: register with the coordinator, take the table, serve until the job ends.
  // A job that failed ends it with the job's error (and exit code).
  static void run_role(Network& network, const JobConfig& config, Logger log);

 private:
  struct ChunkState {
    std::uint32_t key = 0;
    ChunkSpan span;
    Tensor value, sum;
    OptimizerState state;
    std::uint64_t applied = 0;     // updates applied (= synchronous steps when staleness is 0)
    std::set<std::string> pushed;  // synchronous: workers that pushed step `applied`
    int contributors = 0;          // synchronous: pushes with data in `sum`
  };
  struct ParkedPull {
    std::string peer, worker;
    std::uint64_t request_id = 0, clock = 0;
    std::chrono::steady_clock::time_point deadline;
  };

  void handle(Incoming& in);
  void handle_push(Incoming& in);
  // A pushed frame's floats: the frame itself, or an aligned copy when it is not float-aligned.
  static Tensor float_view(zmq::message_t& frame, std::int64_t numel);
  void handle_pull(Incoming& in);
  void error_reply(const std::string& peer, std::uint64_t request_id, wire::ErrorCode code, const std::string& message);
  bool pull_ready(std::uint64_t clock) const;
  void answer_pull(const std::string& peer, std::uint64_t request_id);
  void apply(ChunkState& chunk, const Tensor& grad);
  void try_finish_steps();
  void retry_parked();
  std::uint64_t slowest_clock() const;
  ChunkState* find_chunk(std::uint32_t key);

  ServerSocket socket_;
  Backend& backend_;
  Logger log_;
  std::string id_ = "ps";
  ServerOptions options_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<ChunkState> chunks_;
  std::uint32_t first_key_ = 0;
  std::set<std::string> live_, left_, known_;
  std::map<std::string, std::uint64_t> clocks_;  // steps pushed per worker
  std::vector<ParkedPull> parked_;
  ServerStats stats_;
  bool started_ = false;
};

}  // namespace shoal
