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
  // Gradient clipping by global norm (0: off), applied by the trainer before the update
  // (docs/configuration.md: after the all-reduce in sync jobs, on the worker in async ones).
  float clip_norm = 0;
  // false: no weight decay on biases and normalisation parameters (every 1-D parameter).
  bool decay_bias_and_norm = true;
};

// Elements [begin, end) of a parameter arena.
struct ElementRange {
  std::int64_t begin = 0, end = 0;
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

  // Elements of the arena that get no weight decay (sorted, disjoint).
  void exclude_from_decay(std::vector<ElementRange> ranges) { no_decay_ = std::move(ranges); }

  // One update of param from grad with learning rate lr (the schedule is the caller's). param
  // holds the arena's elements from `offset` on (a parameter server's chunk), for the ranges
  // excluded from weight decay.
  void apply(Backend& backend, Tensor& param, const Tensor& grad, OptimizerState& state, float lr,
             std::int64_t offset = 0) const;

 private:
  void update(Backend& backend, Tensor& param, const Tensor& grad, std::vector<Tensor>& slots, std::int64_t updates,
              float lr, float weight_decay) const;
  OptimizerConfig config_;
  std::vector<ElementRange> no_decay_;
};

}  // namespace shoal
