// What the loss of a process means for the job (docs/fault-tolerance.md), decided in one place:
//   - a sync rank: the job ends (peer_lost), unless sync.elastic is on and it is not rank 0
//     (which hosts the coordinator): then the world re-forms in place without it; a rank not
//     admitted yet, or lost after the last epoch, changes nothing;
//   - an async worker: its leased shards go back to the queue; the job ends only when no worker
//     is left before the last epoch is done;
//   - a parameter server: a job with async.staleness = 0 (or a sync job) ends; another pauses
//     until the server is back and has restored its shard, and ends if it is not back within
//     cluster.startup_timeout_seconds.
// Plain values in, a decision out: unit-tested without a cluster.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace shoal {

struct FailureSettings {
  bool sync = false;
  bool elastic = false;          // sync.elastic
  std::int64_t staleness = 0;    // async.staleness
};

struct WorkerLoss {
  std::string who;  // "worker.2 (rank 2)"
  std::string how;  // "declared dead (no heartbeat for 10 s)"
  int rank = -1;
  bool pending_joiner = false;  // sync: registered, not admitted yet
  bool started = false;         // the job has started (its table published)
  bool finished = false;        // every epoch is done
  bool in_world = false;        // sync: part of the current world
  std::size_t live_workers = 0; // async: workers still alive after this loss
};

struct FailureDecision {
  enum class Action {
    none,     // nothing changes
    reform,   // sync: the world re-forms without it
    release,  // async: its leases go back to the queue
    pause,    // async: a server is missing; the job waits for it
    end_job,  // the job fails with peer_lost, for `reason`
  } action = Action::none;
  // With release: the job also ends (no worker left) for `reason` when it is not empty.
  std::string reason;
};

class FailurePolicy {
 public:
  explicit FailurePolicy(FailureSettings settings) : settings_(settings) {}
  FailureDecision worker_lost(const WorkerLoss& loss) const;
  FailureDecision server_lost(const std::string& id, const std::string& how) const;

 private:
  FailureSettings settings_;
};

}  // namespace shoal
