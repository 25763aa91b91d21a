// Strategy: what a worker does with gradients. The training loop (worker/trainer.h) is written
// once and calls these hooks; `LocalStrategy` applies the optimizer in-process, and the
// distributed strategies (parameter servers, all-reduce) plug into the same hooks.
#pragma once

#include <cstdint>
#include <vector>

#include "core/optimizer.h"
#include "models/model.h"

namespace shoal {

// Thrown out of a strategy's wait when the worker was asked to stop (SIGTERM) while nothing
// of its own was in flight: the job loop then leaves the job. Not an error.
struct StopRequested {};

class Strategy {
 public:
  virtual ~Strategy() = default;
  // Before forward: e.g. bring parameters up to date.
  virtual void begin_step(Model& /*model*/, std::int64_t /*step*/) {}
  // During backward, as soon as these parameters' gradients are final.
  virtual void gradients_ready(Model& /*model*/, const std::vector<Parameter*>& /*params*/) {}
  // After backward: apply (or hand off) the update for this step with learning rate lr.
  virtual void end_step(Model& model, std::int64_t step, float lr) = 0;
};

// Single process: the optimizer updates the whole parameter arena in one call.
class LocalStrategy final : public Strategy {
 public:
  LocalStrategy(Backend& backend, Model& model, Optimizer optimizer);
  void end_step(Model& model, std::int64_t step, float lr) override;
  const OptimizerState& state() const { return state_; }

 private:
  Backend& backend_;
  Optimizer optimizer_;
  OptimizerState state_;
};

}  // namespace shoal
