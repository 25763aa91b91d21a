// Is this process on a MIG slice? NCCL cannot all-reduce between MIG instances, so a sync job on
// them is refused. The NVIDIA device plugin of the GPU Operator names the slice in
// NVIDIA_VISIBLE_DEVICES (MIG-<uuid>); GKE's own device plugin sets no such variable, so the
// driver is asked as well: NVML (libnvidia-ml.so.1, loaded at run time, absent on hosts without
// the NVIDIA driver) says whether a visible GPU is in MIG mode and which instances it has.
#pragma once

#include <optional>
#include <string>

namespace shoal {

struct MigSlice {
  std::string id;    // MIG-<uuid> (or the GPU's name and index when NVML gives no instance)
  std::string name;  // "NVIDIA H100 80GB HBM3 MIG 1g.10gb", when NVML says
  std::string how;   // "NVIDIA_VISIBLE_DEVICES" or "NVML: GPU 0 is in MIG mode"
};

// Through NVML from `library` (a path, or a name dlopen searches): the first MIG instance of a
// GPU in MIG mode. Nothing when the library cannot be loaded, NVML does not start, or no GPU is
// in MIG mode (an error of NVML is no MIG: a whole GPU stays usable).
std::optional<MigSlice> mig_slice_from_nvml(const std::string& library = "libnvidia-ml.so.1");

// The environment first (no library loaded), then NVML.
std::optional<MigSlice> mig_slice();

}  // namespace shoal
