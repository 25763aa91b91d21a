#include "compute/optimizer.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace shoal {

OptimizerKind parse_optimizer_kind(const std::string& name) {
  if (name == "sgd") return OptimizerKind::sgd;
  if (name == "adam") return OptimizerKind::adam;
  if (name == "adamw") return OptimizerKind::adamw;
  SHOAL_THROW(ConfigError, "unknown optimizer '" << name << "' (expected sgd, adam or adamw)");
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

}  // namespace shoal
