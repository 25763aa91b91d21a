// Strategy: what a worker does with gradients. The training loop (worker/trainer.h) is written
// once and calls these hooks; `LocalStrategy` applies the optimizer in-process, and the
// distributed strategies (parameter servers, all-reduce) plug into the same hooks.
#pragma once

#include <cstdint>
#include <exception>
#include <vector>

#include "compute/optimizer.h"
#include "models/model.h"

namespace shoal {

// Control flow, not failure: thrown out of a wait deep in a step to unwind to the worker's job
// loop, which catches each kind by name (worker/worker_job.cc). Not an Error, so failure_of would
// call one that escaped an internal error, naming it.
class ControlSignal : public std::exception {};

// The worker was asked to stop (SIGTERM) while nothing of its own was in flight: the job loop
// then leaves the job.
class StopRequested final : public ControlSignal {
 public:
  const char* what() const noexcept override { return "the worker was asked to stop"; }
};

// A sync world agreed to stop between two steps (a rank got SIGTERM; rank 0 has had the step
// checkpointed): every rank ends its epoch there and waits for the job's end (exit 0).
class WorldStops final : public ControlSignal {
 public:
  const char* what() const noexcept override { return "the world agreed to stop"; }
};

class Strategy {
 public:
  virtual ~Strategy() = default;
  // Before forward: e.g. bring parameters up to date.
  virtual void begin_step(Model& /*model*/, std::int64_t /*step*/) {}
  // During backward, as soon as these parameters' gradients are final.
  virtual void gradients_ready(Model& /*model*/, const std::vector<Parameter*>& /*params*/) {}
  // After backward: apply (or hand off) the update for this step with learning rate lr.
  virtual void end_step(Model& model, std::int64_t step, float lr) = 0;
  // The factor on the loss gradient of a batch of `samples` (a mean over the batch; sync: a
  // mean over the global batch of every rank, whose gradients are then summed).
  virtual float loss_scale(std::int64_t samples) const { return 1.f / static_cast<float>(samples); }
  // Sync batch norm: sums per-channel statistics across ranks (empty: statistics stay local).
  virtual SumAcrossRanks batch_norm_sum() { return {}; }
  // Position of this worker's batch in the global batch of the step (sync: per rank).
  virtual std::int64_t sample_offset() const { return 0; }
  // True when gradients leave the worker as they are (async: pushed to the servers), so the
  // trainer clips them (optimizer.clip_norm) after backward and before handing any over.
  virtual bool sends_raw_gradients() const { return false; }
};

// Scales grads so their L2 norm is at most max_norm (0: no clipping); returns the norm before.
double clip_by_global_norm(Backend& backend, Tensor& grads, float max_norm);

// Single process: the optimizer updates the whole parameter arena in one call.
class LocalStrategy final : public Strategy {
 public:
  LocalStrategy(Backend& backend, Model& model, Optimizer optimizer);
  void end_step(Model& model, std::int64_t step, float lr) override;
  const OptimizerState& state() const { return state_; }
  OptimizerState& state() { return state_; }  // a checkpoint restores it
  const Optimizer& optimizer() const { return optimizer_; }

 private:
  Backend& backend_;
  Optimizer optimizer_;
  OptimizerState state_;
};

}  // namespace shoal
