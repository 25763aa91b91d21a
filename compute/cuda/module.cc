// The module's entry table (module.h): the CUDA backend, the NCCL collective and what the build
// sees of the GPUs.
#include "compute/cuda/module.h"

#include "collective/nccl/collective_nccl.h"
#include "compute/backend.h"
#include "compute/cuda/cuda_device.h"

namespace {

std::unique_ptr<shoal::Collective> make_nccl(shoal::RendezvousStore& store, const shoal::WorldInfo& world,
                                             const std::string& prefix, std::chrono::duration<double> timeout,
                                             const shoal::NcclPlacement& placement) {
  return shoal::nccl::make_collective(store, world, prefix, timeout, placement);
}

const shoal::CudaModule kModule{
    shoal::kCudaModuleAbi,          shoal::cuda::visible_device_count, shoal::cuda::library_versions,
    shoal::cuda::describe_devices, shoal::cuda::make_cuda_backend,    make_nccl,
};

}  // namespace

extern "C" __attribute__((visibility("default"))) const shoal::CudaModule* shoal_cuda_module_v1() { return &kModule; }
