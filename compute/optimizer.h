// Optimizers that update any flat slice of a parameter from the same slice of its gradient:
// the local trainer applies them to the whole parameter arena, a parameter server to each chunk
// it owns. The math lives in Backend::{sgd,adam}_update; this file holds the policy and state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compute/backend.h"

namespace shoal {

enum class OptimizerKind { sgd, adam, adamw };
OptimizerKind parse_optimizer_kind(const std::string& name);  // throws ConfigError

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::sgd;
  float lr = 0.01f;
  float momentum = 0.9f;  // sgd only; 0 is plain SGD
  bool nesterov = false;
  float weight_decay = 0;
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;  // adam, adamw
};

// State for one slice: per-element slots (velocity, or Adam's m and v) and the update count.
struct OptimizerState {
  std::vector<Tensor> slots;
  std::int64_t updates = 0;
};

class Optimizer {
 public:
  explicit Optimizer(OptimizerConfig config) : config_(config) {}
  const OptimizerConfig& config() const { return config_; }

  int slot_count() const;
  const char* slot_name(int slot) const;  // for checkpoints: "velocity", "adam_m", "adam_v"
  OptimizerState make_state(Backend& backend, std::int64_t numel) const;

  // One update of param from grad with learning rate lr (the schedule is the caller's).
  void apply(Backend& backend, Tensor& param, const Tensor& grad, OptimizerState& state, float lr) const;

 private:
  OptimizerConfig config_;
};

}  // namespace shoal
