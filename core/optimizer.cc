#include "core/optimizer.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace shoal {

OptimizerKind parse_optimizer_kind(const std::string& name) {
  if (name == "sgd") return OptimizerKind::sgd;
  if (name == "adam") return OptimizerKind::adam;
  if (name == "adamw") return OptimizerKind::adamw;
  SHOAL_THROW(ConfigError, "unknown optimizer '" << name << "' (expected sgd, adam or adamw)");
}

LrScheduleKind parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrScheduleKind::constant;
  if (name == "step") return LrScheduleKind::step;
  if (name == "cosine") return LrScheduleKind::cosine;
  SHOAL_THROW(ConfigError, "unknown learning-rate schedule '" << name << "' (expected constant, step or cosine)");
}

int Optimizer::slot_count() const {
  if (config_.kind == OptimizerKind::sgd) return config_.momentum != 0.f ? 1 : 0;
  return 2;
}

const char* Optimizer::slot_name(int slot) const {
  if (config_.kind == OptimizerKind::sgd) return "velocity";
  return slot == 0 ? "adam_m" : "adam_v";
}

OptimizerState Optimizer::make_state(Backend& backend, std::int64_t numel) const {
  OptimizerState state;
  for (int i = 0; i < slot_count(); ++i) state.slots.push_back(backend.allocate(Shape{numel}));
  return state;
}

void Optimizer::apply(Backend& backend, Tensor& param, const Tensor& grad, OptimizerState& state, float lr) const {
  SHOAL_ASSERT(static_cast<int>(state.slots.size()) == slot_count(),
               "optimizer state has " << state.slots.size() << " slots, expected " << slot_count());
  ++state.updates;
  if (config_.kind == OptimizerKind::sgd) {
    SgdHyper h{lr, config_.momentum, config_.nesterov, config_.weight_decay};
    backend.sgd_update(param, grad, state.slots.empty() ? nullptr : &state.slots[0], h);
    return;
  }
  AdamHyper h;
  h.lr = lr;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.weight_decay = config_.weight_decay;
  h.decoupled = config_.kind == OptimizerKind::adamw;
  h.step = state.updates;
  backend.adam_update(param, grad, state.slots[0], state.slots[1], h);
}

float LrSchedule::at(std::int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps)
    return base_lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  switch (kind) {
    case LrScheduleKind::constant:
      return base_lr;
    case LrScheduleKind::step:
      return base_lr *
             std::pow(gamma, static_cast<float>((step - warmup_steps) / std::max<std::int64_t>(1, step_size)));
    case LrScheduleKind::cosine: {
      std::int64_t span = std::max<std::int64_t>(1, total_steps - warmup_steps);
      double t = std::clamp(static_cast<double>(step - warmup_steps) / static_cast<double>(span), 0.0, 1.0);
      return min_lr + (base_lr - min_lr) * static_cast<float>(0.5 * (1.0 + std::cos(3.141592653589793 * t)));
    }
  }
  return base_lr;
}

}  // namespace shoal
