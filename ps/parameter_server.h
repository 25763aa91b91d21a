// A parameter-server shard (`shoal ps`): owns a contiguous key range of the partition table,
// keeps the values and optimizer state of its chunks, applies every pushed gradient with the
// job's optimizer (the same code the single-process trainer runs) and answers pulls.
//
// Data path: the values live in a versioned chunk store (ps/chunk_store.h). A pull reply sends
// the current buffers zero-copy; pushed gradients are applied straight from the received frames.
// The server takes every message already waiting as one batch: it checks and books each in
// order, then applies the batch's updates, the chunks spread over `threads` (each chunk's
// updates in arrival order), then acknowledges the pushes (a worker may reuse a pushed
// buffer only then) and answers the pulls. A pull is therefore never answered before the
// updates that arrived ahead of it.
//
// Staleness-aware learning rate (`lr_staleness = inverse`): an update is scaled by 1 / (1 + t),
// t being the updates other gradients made to the chunk since the pushing worker pulled it.
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
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "compute/lr_schedule.h"
#include "compute/backend.h"
#include "config/config.h"
#include "coordinator/client/control_client.h"
#include "base/log.h"
#include "compute/optimizer.h"
#include "comm/partition.h"
#include "telemetry/telemetry.h"
#include "comm/transport.h"
#include "ps/chunk_store.h"
#include "ps/update_pool.h"

namespace shoal {


struct ServerOptions {
  std::int64_t staleness = 2;
  LrStaleness lr_staleness = LrStaleness::none;
  int threads = 1;  // chunks updated at once
  std::chrono::milliseconds pull_timeout{60000};
  OptimizerConfig optimizer;
  std::vector<ElementRange> no_decay;  // optimizer.decay_bias_and_norm = false: the model's 1-D parameters
  LrSchedule schedule;
};

struct ServerStats {
  std::uint64_t pushes = 0, pulls = 0, updates = 0, parked = 0, pull_timeouts = 0;
  std::uint64_t push_bytes = 0, pull_bytes = 0;
};

class ParameterServer {
 public:
  ParameterServer(Network& network, const std::string& bind_address, Backend& backend, Logger log);
  ~ParameterServer();  // waits for a checkpoint write in progress

  const std::string& endpoint() const { return socket_.endpoint(); }
  const std::string& id() const { return id_; }
  const ProtocolCounters& counters() const { return socket_.counters(); }
  const ServerStats& stats() const { return stats_; }
  const ChunkStore& store() const { return store_; }

  // Takes ownership of the keys of table.servers[index], starting from `initial` (the whole
  // flat parameter arena; only this server's part is read), or from checkpoint table.restore
  // when the job resumes (values, optimizer state and update counts of this server's element
  // range, whatever number of servers wrote it).
  void start(const std::string& id, const PartitionTable& table, std::size_t index, const float* initial,
             const ServerOptions& options);
  // Waits up to `timeout` for a message, then handles it and every other one already waiting
  // as one batch.
  void serve(std::chrono::milliseconds timeout);
  // The workers taking part in clocks (from the coordinator's heartbeats).
  void set_live_workers(const std::vector<std::string>& workers);
  // A worker that left speaking again over another connection while the coordinator lists it:
  // a new process of that rank. Takes it out of the left set (true).
  bool rejoined_from_new_connection(const std::string& worker, const std::string& peer);
  // Copies this server's current values into `arena` (the whole flat arena).
  void read_values(float* arena) const;
  // A checkpoint this server finished writing since the last call (its files for the
  // coordinator's MANIFEST). Throws the writer's error (an IoError) if it failed.
  std::optional<CheckpointReport> take_written_checkpoint();

  // Updates applied to its most updated chunk: the server's clock, which its heartbeat carries.
  std::uint64_t clock() const;
  // The workers taking part in clocks now.
  std::size_t live_worker_count() const { return live_.size(); }
  // Logs under `log` from now on (the role's name, known once it registered: after binding).
  void set_log(Logger log) { log_ = std::move(log); }
  // Observes, per pushed chunk, how many updates landed on it since the pusher pulled it.
  void set_staleness_histogram(Histogram* histogram) { staleness_histogram_ = histogram; }
  // The address workers connect to: `endpoint` as bound, unless it binds every interface
  // (tcp://0.0.0.0:P, tcp://*:P): then `advertise` (node.advertise) or, when that is empty,
  // `fqdn` (this host's fully qualified name), with the bound port. ConfigError for a host that
  // is not a name or an address.
  static std::string advertised(const std::string& endpoint, const std::string& advertise, const std::string& fqdn);
  // Begins the log line of a server that left on SIGTERM while the job goes on: `shoal launch`
  // restarts a server that printed it and exited 0 (a server that exits 0 at the job's end is not).
  static constexpr const char* kPreemptedLine = "preempted (SIGTERM), left the job: ";

 private:
  struct ChunkState {
    std::uint32_t key = 0;
    ChunkSpan span;
    Tensor sum;
    OptimizerState state;
    std::uint64_t applied = 0;     // updates applied (= synchronous steps when staleness is 0)
    std::set<std::string> pushed;  // synchronous: workers that pushed step `applied`
    int contributors = 0;          // synchronous: pushes with data in `sum`
  };
  struct ParkedPull {
    std::string peer, worker;
    std::uint64_t request_id = 0, clock = 0;
    std::chrono::steady_clock::time_point deadline;
    bool counted = false;             // counted as parked (it could not be answered in its own batch)
    std::vector<std::size_t> chunks;  // a push's pullAfter: the chunks it carried; empty: all
  };
  // An async update waiting for the end of its batch; `grad` borrows a frame of `batch_`.
  struct Update {
    std::size_t chunk = 0;
    Tensor grad;
    float scale = 1;
  };
  struct Ack {
    std::string peer;
    std::uint64_t request_id = 0, clock = 0;
  };

  void handle(Incoming& in);
  void handle_push(Incoming& in);
  // A pushed frame's floats: the frame itself, or an aligned copy when it is not float-aligned.
  static Tensor float_view(zmq::message_t& frame, std::int64_t numel);
  void handle_pull(Incoming& in);
  void error_reply(const std::string& peer, std::uint64_t request_id, wire::ErrorCode code, const std::string& message);
  bool pull_ready(std::uint64_t clock) const;
  void answer_pull(const ParkedPull& pull);
  void apply(ChunkState& chunk, const Tensor& grad, float scale = 1);
  // Applies the batch's updates, acknowledges its pushes, answers the pulls that may be.
  void finish_batch();
  void apply_updates();
  void try_finish_steps();
  void retry_parked();
  // The snapshot a coordinator ordered in this batch: taken after the batch's updates.
  void take_snapshot();
  std::uint64_t slowest_clock() const;
  ChunkState* find_chunk(std::uint32_t key);

  static constexpr std::size_t kMaxBatch = 256;  // messages handled as one batch

  ServerSocket socket_;
  Backend& backend_;
  Logger log_;
  std::string id_ = "ps";
  ServerOptions options_;
  std::unique_ptr<Optimizer> optimizer_;
  std::vector<ChunkState> chunks_;
  ChunkStore store_;                  // chunk i of chunks_ is chunk i here
  std::unique_ptr<UpdatePool> pool_;  // with threads > 1
  std::uint32_t first_key_ = 0;
  std::set<std::string> live_, known_;
  std::set<std::string> listed_;                 // the coordinator's last list of live workers
  std::map<std::string, std::string> left_;      // a worker that left -> the connection it left from
  std::map<std::string, std::uint64_t> clocks_;  // steps pushed per worker
  std::vector<ParkedPull> parked_;
  // The batch in progress: its messages (their frames back the updates), updates, acks.
  std::vector<std::unique_ptr<Incoming>> batch_;
  std::vector<Update> updates_;
  std::vector<Ack> acks_;
  // lr_staleness: per worker, the version of each chunk it last pulled.
  std::map<std::string, std::vector<std::uint64_t>> pulled_;
  ServerStats stats_;
  Histogram* staleness_histogram_ = nullptr;
  bool started_ = false;

  // Checkpoints: the order of the current batch, and the write in progress (one at a time).
  struct SnapshotOrder {
    std::string peer;
    std::uint64_t request_id = 0;
    std::int64_t step = 0;
    std::string dir;
  };
  struct Writer {
    std::int64_t step = 0;
    ChunkStore::Snapshot values;  // held until the file is written
    std::vector<Tensor> slots;    // copies of the optimizer state, one per slot
    double copy_seconds = 0;
    std::thread thread;
    std::atomic<bool> done{false};
    std::optional<FileEntry> file;
    std::exception_ptr error;
    double write_seconds = 0;
  };
  std::optional<SnapshotOrder> snapshot_order_;
  std::unique_ptr<Writer> writer_;
};

// A server's options for a job: staleness, timeouts, the optimizer and the job's learning-rate
// schedule for epochs of table.steps_per_epoch steps (the workers' trainers build theirs with the
// same make_lr_schedule: worker/trainer.h, trainer_options).
ServerOptions server_options(const JobConfig& config, const PartitionTable& table);

}  // namespace shoal
