#include "compute/devices/mig.h"

#include <dlfcn.h>

#include <string>

#include "base/environment.h"

namespace shoal {
namespace {

// NVML's C interface, the few calls used here (nvml.h, declared here so that a build without
// the CUDA toolkit compiles this file; the ABI of these symbols is stable across drivers).
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr unsigned kNvmlMigEnabled = 1;

struct Nvml {
  void* handle = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  nvmlReturn_t (*shutdown)() = nullptr;
  nvmlReturn_t (*count)(unsigned*) = nullptr;
  nvmlReturn_t (*by_index)(unsigned, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*mig_mode)(nvmlDevice_t, unsigned*, unsigned*) = nullptr;
  nvmlReturn_t (*max_mig)(nvmlDevice_t, unsigned*) = nullptr;
  nvmlReturn_t (*mig_by_index)(nvmlDevice_t, unsigned, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned) = nullptr;
  nvmlReturn_t (*uuid)(nvmlDevice_t, char*, unsigned) = nullptr;

  ~Nvml() {
    if (handle != nullptr) dlclose(handle);
  }
  template <typename F>
  bool find(F& f, const char* symbol) {
    f = reinterpret_cast<F>(dlsym(handle, symbol));
    return f != nullptr;
  }
};

std::string text_of(nvmlReturn_t (*get)(nvmlDevice_t, char*, unsigned), nvmlDevice_t device) {
  char buffer[96] = {0};
  if (get == nullptr || get(device, buffer, sizeof(buffer) - 1) != kNvmlSuccess) return "";
  return buffer;
}

}  // namespace

std::optional<MigSlice> mig_slice_from_nvml(const std::string& library) {
  Nvml nvml;
  nvml.handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (nvml.handle == nullptr) return std::nullopt;
  if (!nvml.find(nvml.init, "nvmlInit_v2") || !nvml.find(nvml.shutdown, "nvmlShutdown") ||
      !nvml.find(nvml.count, "nvmlDeviceGetCount_v2") || !nvml.find(nvml.by_index, "nvmlDeviceGetHandleByIndex_v2") ||
      !nvml.find(nvml.mig_mode, "nvmlDeviceGetMigMode"))
    return std::nullopt;  // a driver too old for MIG has no MIG
  nvml.find(nvml.max_mig, "nvmlDeviceGetMaxMigDeviceCount");
  nvml.find(nvml.mig_by_index, "nvmlDeviceGetMigDeviceHandleByIndex");
  nvml.find(nvml.name, "nvmlDeviceGetName");
  nvml.find(nvml.uuid, "nvmlDeviceGetUUID");
  if (nvml.init() != kNvmlSuccess) return std::nullopt;
  std::optional<MigSlice> found;
  unsigned gpus = 0;
  if (nvml.count(&gpus) == kNvmlSuccess) {
    for (unsigned g = 0; g < gpus && !found; ++g) {
      nvmlDevice_t gpu = nullptr;
      unsigned current = 0, pending = 0;
      if (nvml.by_index(g, &gpu) != kNvmlSuccess || nvml.mig_mode(gpu, &current, &pending) != kNvmlSuccess ||
          current != kNvmlMigEnabled)
        continue;
      MigSlice slice;
      slice.how = "NVML: GPU " + std::to_string(g) + " (" + text_of(nvml.name, gpu) + ") is in MIG mode";
      slice.id = "GPU " + std::to_string(g);
      // The instances this process can reach (a container sees the ones it was given).
      unsigned most = 0;
      if (nvml.max_mig != nullptr && nvml.mig_by_index != nullptr && nvml.max_mig(gpu, &most) == kNvmlSuccess) {
        for (unsigned i = 0; i < most; ++i) {
          nvmlDevice_t instance = nullptr;
          if (nvml.mig_by_index(gpu, i, &instance) != kNvmlSuccess) continue;
          const std::string uuid = text_of(nvml.uuid, instance);
          if (!uuid.empty()) slice.id = uuid;
          slice.name = text_of(nvml.name, instance);
          break;
        }
      }
      found = slice;
    }
  }
  nvml.shutdown();
  return found;
}

std::optional<MigSlice> mig_slice() {
  if (auto id = mig_device_from_environment()) return MigSlice{*id, "", "NVIDIA_VISIBLE_DEVICES"};
  return mig_slice_from_nvml();
}

}  // namespace shoal
