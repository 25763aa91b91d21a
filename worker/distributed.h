// What the job loop of a distributed worker (worker/worker_job.cc) asks of its strategy, on
// top of the training hooks: the loop is written once, and the parameter-server strategy and
// the all-reduce strategy (and later the GPU and elastic variants) plug into it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/source.h"
#include "data/shard.h"
#include "worker/strategy.h"
#include "worker/trainer.h"

namespace shoal {

class DistributedStrategy : public Strategy {
 public:
  // Once, before the first task (sync: every rank takes rank 0's parameters). A stop request
  // while it waits on peers leaves the job like one during training.
  virtual void start() {}
  // Before asking the coordinator for the next task (async: the next parameters are in).
  virtual void before_task() {}
  // The coordinator has no task for this worker right now.
  virtual void idle() {}
  // Elastic sync: this task was done by the world whose state this rank adopted (an epoch it
  // trained or evaluated before this rank joined, or before the world changed). The job loop
  // reports it with no samples instead of running it: running it would wait for peers that are
  // already past it. `evaluate`: the task is an evaluation of `epoch`, else training of it.
  virtual bool done_by_the_world(bool /*evaluate*/, std::int64_t /*epoch*/) const { return false; }
  // Trains this worker's part of `shard` (async: all of it; sync: this rank's part of every
  // global step); returns this worker's loss statistics.
  virtual LossStats train(Trainer& trainer, const DataSource& data, const std::vector<std::int64_t>& order,
                          const DataShard& shard) = 0;
  // Evaluates the model on `test`: the result to report (sync: every rank's part, combined).
  virtual EvalResult evaluate(Trainer& trainer, const DataSource& test) = 0;
  // The worker leaves the job (best effort, bounded).
  virtual void leave() {}
  // The optimizer state this process keeps (sync: every rank's copy; async: none, the servers
  // keep it): what a checkpoint saves and restores.
  virtual OptimizerState* optimizer_state() { return nullptr; }
  virtual const Optimizer* optimizer() const { return nullptr; }
  // Steps taken.
  virtual std::uint64_t clock() const = 0;
  // One line for the log: "parameter servers (2 servers, 14 chunks)", "all-reduce over gloo ...".
  virtual std::string describe() const = 0;
};

}  // namespace shoal
