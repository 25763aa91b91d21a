// Reading the environment a launcher gives a process (mpirun, `shoal launch`, Kubernetes):
// integers are checked, and a variable that is set but malformed is a ConfigError naming it.
#pragma once

#include <optional>
#include <string>

namespace shoal {

// The integer value of environment variable `name` in [low, high]; nullopt when it is unset.
std::optional<long> env_integer(const char* name, long low, long high);

// The ordinal a StatefulSet gives its pods, from a host name: the digits after its last '-'
// ("shoal-ps-3" -> 3; "shoal-ps-3.shoal-ps.default.svc" -> 3). nullopt when it has none, or when
// they are more than 7 digits.
std::optional<int> hostname_ordinal(const std::string& host);

// The MIG instance this process was given, if any: the first `MIG-...` entry of
// NVIDIA_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES (how the NVIDIA device plugin, and GKE's MIG
// partitions, hand a container a slice of a GPU). `nvidia` and `cuda` are those variables' values
// (null: unset).
std::optional<std::string> mig_device(const char* nvidia, const char* cuda);
// The same, read from this process's environment.
std::optional<std::string> mig_device_from_environment();

}  // namespace shoal
