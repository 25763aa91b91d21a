// The coordinator (`shoal coordinator`): the control plane of an asynchronous job. It waits for
// the configured servers and workers to register, publishes the partition table, leases data
// shards, watches heartbeats (a dead worker's shards go back to the queue), has a worker
// evaluate the model after each epoch, and ends the job. It never touches tensor bytes.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <zmq.hpp>

#include "base/log.h"
#include "checkpoint/checkpoint.h"
#include "comm/partition.h"
#include "comm/transport.h"
#include "config/config.h"
#include "coordinator/checkpoint_driver.h"
#include "coordinator/client/control_client.h"
#include "coordinator/elastic_world.h"
#include "coordinator/failure_policy.h"
#include "coordinator/lease_book.h"
#include "coordinator/membership.h"
#include "coordinator/rendezvous_table.h"
#include "coordinator/sync_book.h"
#include "telemetry/metrics_file.h"
#include "telemetry/telemetry.h"

namespace shoal {

struct CoordinatorResult {
  double final_test_accuracy = 0;
  std::vector<EpochReport> epochs;
};

// The coordinator's own responsibilities are classes of their own, each tested without a
// cluster: who is in the job (Membership), the work (a WorkBook: LeaseBook or SyncBook), the
// rendezvous store (RendezvousTable), checkpoints (CheckpointDriver), an elastic sync job's
// world (ElasticSyncWorld) and what a lost process means (FailurePolicy). This class receives
// the messages, hands each to its handler and ties those pieces together.
class Coordinator : private SnapshotOrders {
 public:
  Coordinator(Network& network, const JobConfig& config, Logger log, MetricsWriter& metrics);
  const std::string& endpoint() const { return socket_.endpoint(); }
  // Runs the job to its end and tells every process how it ended. A failed job (the cluster
  // did not assemble in time: code `timeout`; a parameter server or every worker lost:
  // `peer_lost`) is thrown as an Error with that code after everyone was told.
  CoordinatorResult run();
  // Ends the job early (the code every process then exits with is `timeout`).
  void request_stop() { stop_ = true; }
  // Preemption (SIGTERM): once `flag` turns true the job stops at a step boundary, after a
  // last checkpoint when the newest is older than checkpoint.on_term_older_than; every
  // process then exits 0 and the job resumes from that checkpoint when started again.
  void set_term_flag(const std::atomic<bool>* flag) { term_ = flag; }
  const ProtocolCounters& counters() const { return socket_.counters(); }
  // Gauges of the job for the status endpoint (members, generation, steps, epochs, checkpoint
  // age), updated by run()'s loop; ready once the job has assembled. Set before run().
  void set_telemetry(Telemetry* telemetry) { telemetry_ = telemetry; }
  // Tests: stops at once, telling nobody and writing nothing more, as kill -9 stops the process
  // (run() throws InternalError within 20 ms).
  void vanish() { vanish_ = true; }

 private:
  // One message: the sender checked, then one handler per kind.
  void handle(Incoming& in, Clock::time_point now);
  void handle_register(const Incoming& in, Clock::time_point now);
  void handle_heartbeat(const Incoming& in);
  void handle_table_request(const Incoming& in);
  void handle_lease_request(const Incoming& in, const Member& member, Clock::time_point now);
  void handle_lease_done(const Incoming& in, const Member& member, Clock::time_point now);
  void handle_leave(const Incoming& in, const Member& member, Clock::time_point now);
  void handle_store_set(const Incoming& in);
  void handle_store_get(const Incoming& in);
  void handle_eval_done(const Incoming& in, Clock::time_point now);
  // A finished shard or evaluation, counted in the book (and the live state).
  struct ShardDone {
    std::int64_t epoch = 0, index = 0;
    ShardStats stats;
    double seconds = 0;
    bool resent = false;  // sent again after a failover
  };
  void record_shard(const Member& member, const ShardDone& done, Clock::time_point now);
  void record_evaluation(const std::string& worker, std::int64_t epoch, double loss, double accuracy,
                         std::int64_t samples);
  void publish_table();
  void reply_error(const Incoming& in, wire::ErrorCode code, const std::string& message);
  void check_liveness(Clock::time_point now);
  // cluster.stall_seconds: a worker alive (heartbeats) but making no progress is treated as dead.
  void check_stalls(Clock::time_point now);
  // A worker died or left: its leases go back to the queue.
  void worker_gone(const std::string& id, const std::string& how);
  void report_epochs(Clock::time_point now);
  void update_telemetry(Clock::time_point now);
  bool everyone_told() const;
  // Ends the job (the first end wins) and says so once.
  void end_job(ExitCode code, const std::string& reason);
  void reply_register(const Incoming& in, const Member& m);
  // Once the job is over, the answer to whatever a process asks: how it ended.
  void reply_job_over(const Incoming& in);

  // Checkpoints (docs/checkpoint-format.md), driven by checkpoints_. A checkpoint drains the
  // job first: no new shard is leased until every leased one is reported and every live worker
  // has asked again (so its pushes are applied); then every server snapshots its shard at once
  // and the job goes on while the servers write. The coordinator writes its own files and the
  // MANIFEST once every server (and a worker, for batch-norm buffers) reported its files.
  void resume_from_checkpoint();
  bool checkpoint_due() const;
  void drive_checkpoint(Clock::time_point now);
  void snapshot_servers(Clock::time_point now);
  void abandon_checkpoint(const std::string& why);
  // A checkpoint ended (written, abandoned or found complete): a job stopping on SIGTERM ends.
  void after_checkpoint_ended();
  void order_snapshot(const std::string& server, std::int64_t step, const std::string& dir) override;
  void handle_checkpoint_files(const Incoming& in);
  // Sync jobs: whether a rank asking for work now must wait (a checkpoint is cut before the
  // epoch it would train); decides, once per epoch, whether one is due.
  bool sync_checkpoint_holds(const std::string& worker, Clock::time_point now);
  // A parameter server lost: the job pauses (no leases, no table) until it registers again and
  // restores its shard from the newest checkpoint.
  // A server gone (or, keep_checkpoint, preempted at the cut of the checkpoint in progress: its
  // files are still to come) pauses the job until it is back.
  void server_lost(const std::string& id, Clock::time_point now, bool keep_checkpoint = false);
  // A server stopped answering, or left: a job with staleness 0 ends, another pauses (server_lost).
  void server_gone(const std::string& id, const std::string& how, Clock::time_point now);
  // A parameter server got SIGTERM (wire `preempt`): a checkpoint is cut, the job pauses at the cut,
  // and once the server has written its files it is told to go (docs/checkpoint-format.md).
  void handle_preempt(const Incoming& in, Clock::time_point now);
  // Sync rank 0 between two steps of an epoch: a checkpoint cut there (every_steps or seconds),
  // or, when the world agreed to stop (SIGTERM), the last one before the job ends with exit 0.
  void handle_sync_cut(const Incoming& in, const Member& member);
  // Elastic sync: `lost` leaves the world; the members form a new one.
  void reform_world(const std::string& lost);
  // The world changed (`lost` left or `joined` entered): a new table version, logged.
  void announce_world(const std::string& lost, const std::string& joined);
  bool is_alive(const std::string& id) const;
  void server_returns(const Incoming& in, wire::Register::Reader reg, Clock::time_point now);
  // Elastic sync: a rank registers with a running job (in the place of a missing one).
  void sync_rank_joins(const Incoming& in, wire::Register::Reader reg, Clock::time_point now);
  // Elastic sync: ranks that registered with the running job join the world at a safe point.
  void admit_joiners();

  // Failover (async jobs with checkpoint.dir, docs/checkpoint-format.md "The coordinator"). The
  // job's live data position (which shards of which epoch are done, the steps) is rewritten
  // beside the checkpoints after every change. A coordinator that finds it at start was
  // restarted while the job ran: it answers unknown members coordinatorRestarted, takes their
  // registrations again (each with the table version it works with and the work it holds), and
  // once every member is back (or, for workers, after cluster.dead_after_seconds) goes on from
  // that position when a server kept its state, else from the newest checkpoint as any restart.
  void write_live_state();
  void note_rejoin(wire::Register::Reader reg, const std::string& id);
  bool takeover_assembled(Clock::time_point now) const;
  // Builds the book from the live state (or the checkpoint), hands back the work members hold
  // and counts the reports that came before.
  void take_over(Clock::time_point now);

  Network& network_;
  const JobConfig& config_;
  const std::string settings_text_;  // job_settings_text(config_): what every member must share
  const std::uint64_t settings_digest_;
  Logger log_;
  MetricsWriter& metrics_;
  ServerSocket socket_;
  Membership members_;
  std::int64_t train_samples_ = 0;
  std::int64_t model_elements_ = 0;
  std::optional<PartitionTable> table_;
  bool sync_;
  std::int64_t servers_wanted_;
  std::unique_ptr<WorkBook> book_;
  RendezvousTable store_;             // the rendezvous store (sync jobs)
  std::map<std::string, bool> told_;  // members told that the job is over
  Clock::time_point started_;
  std::atomic<bool> stop_{false}, vanish_{false};
  CoordinatorResult result_;
  std::optional<JobEnd> end_;  // set once the job is over

  std::int64_t decided_epoch_ = 0;  // sync: the last epoch whose start was checked for a checkpoint
  bool final_checkpoint_ = false;   // async: the one after the last epoch was started
  std::string layout_;              // the model's parameters and buffers (the `layout` file)
  bool has_buffers_ = false;
  std::optional<CheckpointDriver> checkpoints_;  // made once the model's layout is known
  FailurePolicy failure_;
  std::optional<ElasticSyncWorld> world_;  // sync jobs, once started
  std::map<std::string, std::unique_ptr<ControlClient>> server_clients_;
  std::map<std::string, bool> at_boundary_;  // worker -> asked for work since its last task
  std::int64_t steps_ = 0;                   // global steps: batches reported by workers
  Telemetry* telemetry_ = nullptr;
  std::string restored_from_;
  std::string restored_position_;
  std::set<std::string> missing_servers_;    // lost and not back yet: the job is paused
  std::set<std::string> preempting_;         // servers that got SIGTERM, waiting for a checkpoint's cut
  std::set<std::string> preempted_servers_;  // paused at a cut: go once their files are in
  Clock::time_point paused_since_;
  struct Recovery {
    std::string who;
    Clock::time_point lost_at;  // its last sign of life
  };
  std::optional<Recovery> recovering_;  // a process was lost: until the next completed shard
  const std::atomic<bool>* term_ = nullptr;
  bool terminating_ = false;
  std::string live_state_path_;            // "": no failover (sync, or no checkpoint.dir)
  std::optional<std::string> taken_over_;  // the live state this coordinator found at start
  bool ended_before_restart_ = false;      // the live state said the job was over
  std::int64_t live_epoch_ = 0;            // the newest epoch the live position was written with
  std::uint64_t rejoined_table_version_ = 0;
  int servers_kept_state_ = 0, servers_fresh_ = 0;
  std::map<std::string, HeldWork> held_;  // worker -> what it held when it registered again
  struct Deferred {                       // reports that came before the takeover
    std::string worker;
    bool evaluation = false;
    ShardDone shard;
    double loss = 0, accuracy = 0;
    std::int64_t eval_samples = 0;
  };
  std::vector<Deferred> deferred_;
  std::optional<Clock::time_point> took_over_;  // until the next completed shard: the recovery time
  bool preempted_ = false;                      // the job stopped on SIGTERM (exit 0, to be resumed)
  std::int64_t stop_step_ = -1;                 // sync: the step the world agreed to stop at
};

}  // namespace shoal
