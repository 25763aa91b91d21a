#include "worker/strategy.h"

#include <cmath>

namespace shoal {

LocalStrategy::LocalStrategy(Backend& backend, Model& model, Optimizer optimizer)
    : backend_(backend), optimizer_(std::move(optimizer)) {
  state_ = optimizer_.make_state(backend_, model.params().parameter_count());
  if (!optimizer_.config().decay_bias_and_norm) optimizer_.exclude_from_decay(model.params().bias_and_norm_ranges());
}

void LocalStrategy::end_step(Model& model, std::int64_t /*step*/, float lr) {
  // Sync jobs reach here after the all-reduce: every rank clips the same averaged gradient.
  clip_by_global_norm(backend_, model.params().grads(), optimizer_.config().clip_norm);
  optimizer_.apply(backend_, model.params().values(), model.params().grads(), state_, lr);
}

double clip_by_global_norm(Backend& backend, Tensor& grads, float max_norm) {
  if (max_norm <= 0) return 0;
  const double norm = std::sqrt(backend.sum_squares(grads));
  if (norm > max_norm) backend.scale(grads, static_cast<float>(max_norm / norm));
  return norm;
}

}  // namespace shoal
