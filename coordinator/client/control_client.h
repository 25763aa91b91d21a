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
// The rank in a member id ("worker.3" -> 3; -1 for an id without one).
int rank_of_member(const std::string& id);

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

class Heartbeat;

// A coordinator restarted while the job ran answered (wire coordinatorRestarted), or the one asked
// was replaced while this request waited: register again (the Heartbeat does, see
// Heartbeat::enable_rejoin) and send the request again. Without failover, a timeout.
class CoordinatorRestarted final : public TimeoutError {
 public:
  using TimeoutError::TimeoutError;
};

// The work a worker was leased and has not reported: what it tells a restarted coordinator, so
// that nobody else is handed it.
struct HeldWork {
  enum Kind { none, shard, evaluation } kind = none;
  std::int64_t epoch = 0, index = 0;
};

// What a member registers again with (a restarted coordinator): who it is, the table it works
// with and what it holds.
struct RejoinClaim {
  std::uint64_t table_version = 0;
  HeldWork held;
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
  // With `rejoin`: registering again with a coordinator restarted while the job ran, keeping
  // this process's state (Register.rejoin).
  std::optional<std::string> register_node(wire::Role role, int rank, const std::string& address, Seconds deadline,
                                           const std::atomic<bool>* stop = nullptr,
                                           const RejoinClaim* rejoin = nullptr);
  // Waits until the coordinator publishes the partition table; nothing if `stop` turned true.
  std::optional<PartitionTable> fetch_table(Seconds deadline, const std::atomic<bool>* stop = nullptr);
  LeaseTask request_lease();
  // Sync rank 0: a checkpoint at this step, mid-epoch. The order to write it (save_buffers:
  // the step and directory), or nothing when the coordinator takes none now (checkpoints off,
  // or one still being completed).
  std::optional<LeaseTask> sync_cut(const SyncCutRequest& cut);
  // `resent`: the same report again, after a coordinator failover.
  void report_shard(std::int64_t epoch, std::int64_t index, std::int64_t samples, double loss_sum, std::int64_t correct,
                    double seconds, double data_wait_seconds = 0, bool resent = false);
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
  // Failover: a waiting request ends within 50 ms with CoordinatorRestarted once `heartbeat`
  // has registered this process again with a restarted coordinator (the one asked may have died
  // with the request) or, with `when_silent`, once the coordinator stopped answering heartbeats.
  void watch_coordinator(const Heartbeat* heartbeat, bool when_silent) {
    watched_ = heartbeat;
    abandon_when_silent_ = when_silent;
  }

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
  const Heartbeat* watched_ = nullptr;
  bool abandon_when_silent_ = false;
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
  // dead_after (TimeoutError; with failover, for the grace), this process dropped from the job
  // (TimeoutError: the coordinator declared it dead), or a failure of the heartbeat thread itself.
  void check() const;

  // Failover (async jobs with checkpoint.dir, docs/checkpoint-format.md "The coordinator"): a
  // coordinator silent for dead_after is waited for up to `grace` (cluster.coordinator_grace_seconds)
  // instead, and when a restarted one answers coordinatorRestarted this thread registers the
  // process again as `role` `rank` (servers: at `address`), reporting the table version and the
  // work it holds (set_claim), then counts a rejoin.
  struct Identity {
    wire::Role role = wire::Role::WORKER;
    int rank = 0;
    std::string address, device = "cpu", settings;
    std::uint64_t settings_digest = 0;
  };
  void enable_rejoin(Identity identity, Seconds grace);
  bool rejoins_enabled() const { return rejoin_enabled_; }
  void set_claim(const RejoinClaim& claim);
  void set_held(const HeldWork& held);
  // Times this process registered again with a restarted coordinator.
  std::uint64_t rejoins() const { return rejoins_; }
  // No reply from the coordinator for longer than dead_after (cluster.dead_after_seconds): what
  // it would take for the coordinator to declare this process dead, so a coordinator that is
  // merely slow (busy, or under a sanitizer) is not given up on.
  bool coordinator_silent() const;
  // Waits until this process has registered again since `seen` rejoins, or, with
  // `or_answering`, until the coordinator answers heartbeats (true); false when stopped. Throws
  // what check() throws once the grace is over, and a failed job's end.
  bool await_rejoin(std::uint64_t seen, const std::atomic<bool>* stop, bool or_answering) const;

 private:
  void loop(std::string coordinator, std::string sender, Seconds interval, Seconds dead_after);
  void rejoin(std::unique_ptr<ControlClient>& registration, const std::string& coordinator, const std::string& sender);

  Network& network_;
  Logger log_;
  std::atomic<bool> stop_{false}, ended_{false};
  std::atomic<std::uint64_t> clock_{0}, generation_{0}, table_version_{0}, rejoins_{0};
  std::atomic<std::int64_t> last_ok_ns_{0};  // steady clock of the last reply
  Seconds interval_, dead_after_;
  std::atomic<bool> rejoin_enabled_{false};
  mutable std::mutex mutex_;
  Identity identity_;  // guarded by mutex_, as are claim_ and grace_
  RejoinClaim claim_;
  Seconds grace_{0};
  std::vector<std::string> live_workers_;
  std::optional<JobEnd> job_end_;
  std::optional<Failure> failure_;
  bool detached_ = false;  // failure_ is the coordinator lost or this process dropped
  std::thread thread_;
};

}  // namespace shoal
