// The backend a process computes on, made for its device: the CPU backend in-process, the CUDA
// backend from the CUDA module (loaded only then, compute/devices/cuda_module_loader.h); and what
// this build and this host can use, for `shoal version` and device = auto.
#pragma once

#include <memory>
#include <string>

#include "compute/backend.h"

namespace shoal {

// Builds the backend for a device; throws DeviceError naming what is missing.
std::unique_ptr<Backend> make_backend(const BackendOptions& options);

// Whether this build has the CUDA module.
bool cuda_built();
// GPUs this process can use: 0 when not built, without an NVIDIA driver (the module is then not
// loaded), or when the module cannot be loaded.
int cuda_device_count();
// "shoal 0.1.0, CUDA support: ..." without loading the module.
std::string build_description();
// One line per visible GPU ("GPU 0: NVIDIA H100 80GB HBM3, 79.1 GiB, compute 9.0"), or why there
// is none. Loads the module only where a driver is present.
std::string describe_gpus();

}  // namespace shoal
