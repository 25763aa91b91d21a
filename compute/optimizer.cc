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

void Optimizer::update(Backend& backend, Tensor& param, const Tensor& grad, std::vector<Tensor>& slots,
                       std::int64_t updates, float lr, float weight_decay) const {
  if (config_.kind == OptimizerKind::sgd) {
    SgdHyper h{lr, config_.momentum, config_.nesterov, weight_decay};
    backend.sgd_update(param, grad, slots.empty() ? nullptr : &slots[0], h);
    return;
  }
  AdamHyper h;
  h.lr = lr;
  h.beta1 = config_.beta1;
  h.beta2 = config_.beta2;
  h.eps = config_.eps;
  h.weight_decay = weight_decay;
  h.decoupled = config_.kind == OptimizerKind::adamw;
  h.step = updates;
  backend.adam_update(param, grad, slots[0], slots[1], h);
}

void Optimizer::apply(Backend& backend, Tensor& param, const Tensor& grad, OptimizerState& state, float lr,
                      std::int64_t offset) const {
  SHOAL_ASSERT(static_cast<int>(state.slots.size()) == slot_count(),
               "optimizer state has " << state.slots.size() << " slots, expected " << slot_count());
  ++state.updates;
  const std::int64_t n = param.numel(), end = offset + n;
  bool excluded = false;
  for (const auto& r : no_decay_) excluded = excluded || (r.begin < end && r.end > offset);
  if (config_.weight_decay == 0 || !excluded) {
    update(backend, param, grad, state.slots, state.updates, lr, config_.weight_decay);
    return;
  }
  // Runs of elements with and without decay, each updated on its slices.
  auto run = [&](std::int64_t from, std::int64_t to, float decay) {
    if (to <= from) return;
    Tensor p = param.flat_slice(from - offset, to - from);
    std::vector<Tensor> slots;
    for (auto& s : state.slots) slots.push_back(s.flat_slice(from - offset, to - from));
    update(backend, p, grad.flat_slice(from - offset, to - from), slots, state.updates, lr, decay);
  };
  std::int64_t at = offset;
  for (const auto& r : no_decay_) {
    if (r.end <= at || r.begin >= end) continue;
    run(at, std::max(at, r.begin), config_.weight_decay);
    at = std::max(at, r.begin);
    run(at, std::min(end, r.end), 0.f);
    at = std::min(end, r.end);
  }
  run(at, end, config_.weight_decay);
}

}  // namespace shoal
