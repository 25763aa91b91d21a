#include "coordinator/failure_policy.h"

namespace shoal {

FailureDecision FailurePolicy::worker_lost(const WorkerLoss& loss) const {
  using A = FailureDecision::Action;
  if (!settings_.sync) {
    if (loss.live_workers == 0 && !loss.finished) return {A::release, "every worker is gone before the job finished"};
    return {A::release, ""};
  }
  if (loss.pending_joiner) return {A::none, ""};  // it was not admitted yet: the world is unchanged
  if (!loss.started || loss.finished) return {A::none, ""};
  // Rank 0 hosts the coordinator: the others re-form without a lost rank, but not without it.
  if (settings_.elastic && loss.rank > 0 && loss.in_world) return {A::reform, ""};
  return {A::end_job, "lost " + loss.who + ", " + loss.how +
                          "; a sync job cannot go on without every rank (sync.elastic is off" +
                          (settings_.elastic ? ", or it was rank 0, which hosts the coordinator)" : ")")};
}

FailureDecision FailurePolicy::server_lost(const std::string& id, const std::string& how) const {
  if (settings_.sync || settings_.staleness == 0)
    return {FailureDecision::Action::end_job,
            "parameter server " + id + " " + how +
                "; a synchronous parameter-server job (async.staleness = 0) cannot continue without it"};
  return {FailureDecision::Action::pause, ""};
}

}  // namespace shoal
