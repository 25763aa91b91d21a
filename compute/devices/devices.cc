#include "compute/devices/devices.h"

#include "base/error.h"
#include "compute/cpu/cpu_backend.h"
#include "compute/cuda/module.h"
#include "compute/devices/cuda_module_loader.h"

namespace shoal {

bool cuda_built() { return cuda_module_built(); }

int cuda_device_count() {
  if (!cuda_module_built() || !nvidia_driver_present()) return 0;
  const CudaModule* module = load_cuda_module(nullptr);
  return module != nullptr ? module->visible_device_count() : 0;
}

std::string build_description() {
  std::string text = "shoal " SHOAL_VERSION;
#ifdef SHOAL_WITH_CUDA
  text += ", CUDA support: the module libshoal_cuda.so, loaded by processes that use a GPU (built with "
          SHOAL_CUDA_BUILT_WITH ")";
#else
  text += ", CUDA support: not built (configure with -DSHOAL_CUDA=ON and the toolkit in /usr/local/cuda)";
#endif
  return text;
}

std::string describe_gpus() {
  if (!cuda_module_built()) return "no GPUs: this shoal was built without CUDA";
  if (!nvidia_driver_present()) return "no GPUs: no NVIDIA driver on this host (no /dev/nvidiactl); CUDA not loaded";
  std::string why;
  const CudaModule* module = load_cuda_module(&why);
  if (module == nullptr) return "no GPUs usable: " + why;
  return module->library_versions() + "\n" + module->describe_devices();
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  switch (options.device.kind) {
    case DeviceKind::cpu:
      return make_cpu_backend(options.threads);
    case DeviceKind::cuda: {
      const CudaModule& module = require_cuda_module("device = cuda");
      const int count = module.visible_device_count();
      SHOAL_REQUIRE(count > 0, DeviceError, "device = cuda, but no CUDA GPU is visible");
      SHOAL_REQUIRE(options.device.index >= 0 && options.device.index < count, DeviceError,
                    "device = cuda:" << options.device.index << ", but only " << count << " GPU(s) are visible");
      return module.make_backend(options.device.index, options.tf32);
    }
  }
  SHOAL_THROW(InternalError, "unknown device kind");
}

}  // namespace shoal
