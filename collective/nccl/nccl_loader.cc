// make_nccl_collective for processes outside the CUDA module: the module is loaded on first use
// (a sync job over NCCL computes on a GPU, so its backend has loaded it already).
#include "collective/nccl/collective_nccl.h"
#include "compute/devices/cuda_module_loader.h"
#include "compute/cuda/module.h"

namespace shoal {

std::unique_ptr<Collective> make_nccl_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const std::string& prefix, std::chrono::duration<double> timeout,
                                                 NcclPlacement placement) {
  return require_cuda_module("sync.backend = nccl").make_nccl_collective(store, world, prefix, timeout, placement);
}

}  // namespace shoal
