#include "compute/devices/device_select.h"

#include "compute/devices/cuda_module_loader.h"
#include "compute/devices/devices.h"
#include "base/environment.h"
#include "base/error.h"

namespace shoal {

std::optional<LocalRank> local_rank_of(std::int64_t configured) {
  if (configured >= 0) return LocalRank{static_cast<int>(configured), "node.local_rank"};
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"})
    if (auto value = env_integer(name, 0, 1 << 20)) return LocalRank{static_cast<int>(*value), name};
  return std::nullopt;
}

DeviceChoice choose_device(const std::string& setting, const std::optional<LocalRank>& local_rank, int visible_gpus,
                           bool cuda_built) {
  SHOAL_REQUIRE(setting == "auto" || setting == "cpu" || setting == "cuda", ConfigError,
                "device = '" << setting << "' is not one of auto, cpu, cuda");
  if (setting == "cpu") return {Device::cpu(), "device = cpu"};
  if (setting == "auto" && !cuda_built) return {Device::cpu(), "device = auto: this shoal was built without CUDA"};
  if (setting == "auto" && visible_gpus == 0) return {Device::cpu(), "device = auto: no CUDA GPU is visible"};
  SHOAL_REQUIRE(cuda_built, DeviceError,
                "device = cuda, but this shoal was built without CUDA (SHOAL_CUDA=OFF or no toolkit found)");
  SHOAL_REQUIRE(visible_gpus > 0, DeviceError,
                "device = cuda, but no CUDA GPU is visible (check the driver, CUDA_VISIBLE_DEVICES, or the pod's "
                "nvidia.com/gpu limit)");
  const int rank = local_rank ? local_rank->rank : 0;
  const int index = rank % visible_gpus;
  std::string why = "device = " + setting + ": GPU " + std::to_string(index) + " of " + std::to_string(visible_gpus);
  if (local_rank)
    why += " (local rank " + std::to_string(rank) + " from " + local_rank->source + ")";
  else
    why += " (no local rank set)";
  if (rank >= visible_gpus && visible_gpus > 1) why += "; more local ranks than GPUs, so GPUs are shared";
  return {Device::cuda(index), why};
}

DeviceChoice choose_device(const std::string& setting, std::int64_t configured_local_rank) {
  const auto local_rank = local_rank_of(configured_local_rank);
  if (setting == "cpu") return choose_device(setting, local_rank, 0, cuda_built());
  // device = cuda: the module first, so a missing library is named rather than "no GPU".
  if (setting == "cuda" && cuda_built()) require_cuda_module("device = cuda");
  // device = auto on a host with a driver whose CUDA libraries cannot be loaded: the CPU, saying why.
  std::string why_not;
  if (setting == "auto" && cuda_built() && nvidia_driver_present() && load_cuda_module(&why_not) == nullptr)
    return {Device::cpu(), "device = auto: " + why_not};
  return choose_device(setting, local_rank, cuda_device_count(), cuda_built());
}

}  // namespace shoal
