// The CUDA module's entry table: what a process that loaded libshoal_cuda.so (compute/devices,
// collective/nccl) can ask of it. The module is built from this tree with the same compiler as
// the binary, so the table passes C++ types; `abi` guards against a module left over from another
// build. Only shoal_cuda_module_v1 is exported by the module.
#pragma once

#include <chrono>
#include <memory>
#include <string>

namespace shoal {

class Backend;
class Collective;
class RendezvousStore;
struct WorldInfo;
struct NcclPlacement;

// Bumped whenever the table or a type it passes changes shape.
constexpr int kCudaModuleAbi = 1;

struct CudaModule {
  int abi = kCudaModuleAbi;
  int (*visible_device_count)();  // 0 when there is no driver or no GPU
  std::string (*library_versions)();
  std::string (*describe_devices)();
  std::unique_ptr<Backend> (*make_backend)(int device, bool tf32);
  std::unique_ptr<Collective> (*make_nccl_collective)(RendezvousStore& store, const WorldInfo& world,
                                                      const std::string& prefix, std::chrono::duration<double> timeout,
                                                      const NcclPlacement& placement);
};

}  // namespace shoal

// The module's one exported symbol (looked up with dlsym).
extern "C" const shoal::CudaModule* shoal_cuda_module_v1();
