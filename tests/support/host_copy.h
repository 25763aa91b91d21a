// A tensor's values copied to the host, for tests that compare them.
#pragma once

#include <vector>

#include "compute/backend.h"

namespace shoal::testing {

inline std::vector<float> to_host(Backend& b, const Tensor& t) {
  std::vector<float> v(static_cast<std::size_t>(t.numel()));
  b.copy_to_host(t, v.data());
  return v;
}

}  // namespace shoal::testing
