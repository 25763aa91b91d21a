// Talking to the coordinator: registration, the partition table, leases and results, and a
// background heartbeat that keeps this process alive in the coordinator's eyes and brings back
// the live-worker set and how the job ended. Used by parameter servers and workers.
//
// Registration is idempotent: a process draws a random nonce once and every retry carries it,
// so the copies a DEALER socket queued while the coordinator was not up yet all get the same
// reply instead of registering the process again.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "checkpoint/checkpoint.h"
#include "collective/collective.h"
#include "comm/partition.h"
#include "comm/transport.h"

namespace shoal {

using Seconds = std::chrono::duration<double>;

// How a job ended, as the coordinator tells every process. code ok: it finished.
struct JobEnd {
  ExitCode code = ExitCode::ok;
  std::string reason;
};
// Checked: an exit code outside the documented table is a ProtocolError.
JobEnd job_end_from_wire(wire::JobEnd::Reader end);
void job_end_to_wire(const JobEnd& end, wire::JobEnd::Builder out);
// A job that failed ends this process with the job's exit code.
[[noreturn]] void throw_job_failure(const JobEnd& end);

struct LeaseTask {
  enum Kind { shard, evaluate, wait, finished, save_buffers } kind = wait;
  std::int64_t epoch = 0, index = 0, begin = 0, end = 0;
  std::uint32_t wait_ms = 0;
  JobEnd job_end;         // finished
  std::int64_t step = 0;  // save_buffers: the checkpoint's step and directory
  std::string dir;
};

// Sync rank 0 asks for a checkpoint between two steps of an epoch (SyncCut in shoal.capnp).
struct SyncCutRequest {
  std::int64_t step = 0, epoch = 0, position = 0;
  std::int64_t samples = 0, correct = 0;  // the partial epoch's statistics, for the whole world
  double loss_sum = 0;
  bool stop = false;  // the world agreed to stop here
};

// Files of a checkpoint one process wrote, for the coordinator's MANIFEST.
struct CheckpointReport {
  std::int64_t step = 0;
  std::vector<FileEntry> files;
  double copy_seconds = 0, write_seconds = 0;
};

class ControlClient {
 public:
  ControlClient(Network& network, const std::string& coordinator, std::string sender, Logger log,
                Seconds request_timeout);

  // Registers (retrying until `deadline` passes while the coordinator is not up yet) and
  // adopts the id the coordinator assigns. Returns nothing if `stop` turned true first and
  // the coordinator had not registered us; if it had (its answer crossed the stop), the id,
  // so that the caller leaves the job instead of being declared dead later.
  // Throws TimeoutError, ProtocolError, or the job's failure if it ended before we joined.
  std::optional<std::string> register_node(wire::Role role, int rank, const std::string& address, Seconds deadline,
                                           const std::atomic<bool>* stop = nullptr);
  // Waits until the coordinator publishes the partition table; nothing if `stop` turned true.
  std::optional<PartitionTable> fetch_table(Seconds deadline, const std::atomic<bool>* stop = nullptr);
  LeaseTask request_lease();
  // Sync rank 0: a checkpoint at this step, mid-epoch. The order to write it (save_buffers:
  // the step and directory), or nothing when the coordinator takes none now (checkpoints off,
  // or one still being completed).
  std::optional<LeaseTask> sync_cut(const SyncCutRequest& cut);
  void report_shard(std::int64_t epoch, std::int64_t index, std::int64_t samples, double loss_sum, std::int64_t correct,
                    double seconds, double data_wait_seconds = 0);
  void report_evaluation(std::int64_t epoch, double loss, double accuracy, std::int64_t samples);
  // Tells the coordinator which files of a checkpoint this process wrote.
  void report_checkpoint(const CheckpointReport& report);
  // Coordinator -> parameter server: snapshot the shard now into checkpoint `dir` (the
  // server acknowledges once its copy is taken, and writes in the background).
  void order_snapshot(std::int64_t step, const std::string& dir);
  // A parameter server got SIGTERM: may it go now? `wait`: no, a checkpoint that holds its
  // state is under way (ask again after reporting its files); otherwise `reason` says why it
  // may go (its state is in a checkpoint, or none can be taken). TimeoutError after 2 s at most.
  struct PreemptAnswer {
    bool wait = false;
    std::string reason;
  };
  PreemptAnswer preempt();
  // This worker leaves the job before it is over (SIGTERM): its leases go back at once.
  // Best effort (2 s at most): false if the coordinator did not acknowledge it.
  bool leave();
  // The coordinator's rendezvous store (sync jobs): set a key; read one (nothing while absent).
  void store_set(const std::string& key, const std::vector<char>& value);
  std::optional<std::vector<char>> store_get(const std::string& key);
  const std::string& id() const { return sender_; }
  // What this process computes on, as registered ("cpu", "cuda:1").
  void set_device(std::string device) { device_ = std::move(device); }
  // The settings every member must share (job_settings_text), sent at registration: the
  // coordinator refuses a member whose settings differ, and register_node throws ConfigError
  // naming the first that does.
  void set_job_settings(std::string text, std::uint64_t digest) {
    settings_ = std::move(text);
    settings_digest_ = digest;
  }

  // One request and its reply (matched by request id; stray replies are discarded). An error
  // reply becomes the returned message; no reply in time throws TimeoutError.
  // With `stop`, a stop request ends the wait early (TimeoutError) within 50 ms. A reply to
  // an earlier request with an id from `accept_from` on is accepted too (retries of one
  // idempotent request).
  Incoming request(Outgoing& message, Seconds timeout, const std::atomic<bool>* stop = nullptr,
                   std::uint64_t accept_from = 0);
  Outgoing make(std::uint64_t* request_id = nullptr);

 private:
  ClientSocket socket_;
  std::string sender_;
  Logger log_;
  Seconds timeout_;
  std::uint64_t next_request_ = 1;
  std::uint64_t nonce_;
  std::string device_ = "cpu";
  std::string settings_;
  std::uint64_t settings_digest_ = 0;
};

// The coordinator's store as a RendezvousStore (for forming Gloo and NCCL worlds). Uses the
// client from the calling thread only. Both operations are idempotent, so a request lost on
// the way (or its reply) is sent again, until `deadline` after the first attempt.
class CoordinatorStore final : public RendezvousStore {
 public:
  // `watch` (optional) is called before every read: it throws to end a rendezvous that can no
  // longer complete (the job ended, or an elastic world changed again while forming).
  CoordinatorStore(ControlClient& client, Seconds deadline, std::function<void()> watch = {})
      : client_(client), deadline_(deadline), watch_(std::move(watch)) {}
  void set(const std::string& key, const std::vector<char>& value) override;
  // A request that timed out reads as "absent": get() asks again.
  std::optional<std::vector<char>> try_get(const std::string& key) override;

 private:
  ControlClient& client_;
  Seconds deadline_;
  std::function<void()> watch_;
};

// Heartbeats from a background thread with its own socket. The thread never lets an
// exception escape: what ends it is kept and handed to the role's thread by check().
class Heartbeat {
 public:
  Heartbeat(Network& network, const std::string& coordinator, const std::string& sender, Logger log, Seconds interval,
            Seconds dead_after);
  ~Heartbeat();  // stops the thread

  void set_clock(std::uint64_t clock) { clock_ = clock; }
  std::uint64_t generation() const { return generation_; }
  // The partition table's version in the coordinator's last reply (0 before the job starts).
  std::uint64_t table_version() const { return table_version_; }
  std::vector<std::string> live_workers() const;
  // How the job ended, once the coordinator has said so.
  std::optional<JobEnd> job_end() const;
  // Throws what stopped the heartbeat other than the job's end: the coordinator silent for
  // dead_after (TimeoutError), this process dropped from the job (TimeoutError: the
  // coordinator declared it dead), or a failure of the heartbeat thread itself.
  void check() const;

 private:
  void loop(std::string coordinator, std::string sender, Seconds interval, Seconds dead_after);

  Network& network_;
  Logger log_;
  std::atomic<bool> stop_{false}, ended_{false};
  std::atomic<std::uint64_t> clock_{0}, generation_{0}, table_version_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> live_workers_;
  std::optional<JobEnd> job_end_;
  std::optional<Failure> failure_;
  bool detached_ = false;  // failure_ is the coordinator lost or this process dropped
  std::thread thread_;
};

}  // namespace shoal
