// Reading the environment a launcher gives a process (mpirun, `shoal launch`, Kubernetes):
// integers are checked, and a variable that is set but malformed is a ConfigError naming it.
#pragma once

#include <optional>

namespace shoal {

// The integer value of environment variable `name` in [low, high]; nullopt when it is unset.
std::optional<long> env_integer(const char* name, long low, long high);

}  // namespace shoal
