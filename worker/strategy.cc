#include "worker/strategy.h"

namespace shoal {

LocalStrategy::LocalStrategy(Backend& backend, Model& model, Optimizer optimizer)
    : backend_(backend), optimizer_(std::move(optimizer)) {
  state_ = optimizer_.make_state(backend_, model.params().parameter_count());
}

void LocalStrategy::end_step(Model& model, std::int64_t /*step*/, float lr) {
  optimizer_.apply(backend_, model.params().values(), model.params().grads(), state_, lr);
}

}  // namespace shoal
