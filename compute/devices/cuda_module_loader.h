// Loads the CUDA module (libshoal_cuda.so: the CUDA backend and the NCCL collective) into a
// process that computes on a GPU, once, with dlopen. Until then a process maps no CUDA library,
// so the one binary runs on hosts without them. The module is looked for beside the executable,
// then in ../lib/shoal/ from it, then in the build tree it was built in; the first file found is
// the one loaded (a broken one is an error, not skipped).
#pragma once

#include <string>

namespace shoal {

struct CudaModule;

// Whether this build has the CUDA module at all (SHOAL_CUDA found a toolkit).
bool cuda_module_built();

// Whether this host has an NVIDIA driver (/dev/nvidiactl or /proc/driver/nvidia): without one there
// is no GPU to find, and `device = auto` does not load the module.
bool nvidia_driver_present();

// The module, loaded on first call; nullptr if it cannot be had, with the reason in *why_not
// ("the CUDA module /opt/shoal/libshoal_cuda.so cannot be loaded: libcudnn.so.9: cannot open
// shared object file: No such file or directory").
const CudaModule* load_cuda_module(std::string* why_not);

// The module, or DeviceError (exit 7) whose one line starts with `what` and names what is missing.
const CudaModule& require_cuda_module(const std::string& what);

}  // namespace shoal
