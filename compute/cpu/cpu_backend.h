// The CPU backend: convolutions, inner products, pooling, batch norm and ReLU on oneDNN
// (primitives cached per shape, blocked layouts chosen by oneDNN with reorders at the edges);
// losses, dropout, element-wise ops and optimizer updates as OpenMP loops.
#pragma once

#include <memory>

#include "compute/backend.h"

namespace shoal {

std::unique_ptr<Backend> make_cpu_backend(int threads);

}  // namespace shoal
