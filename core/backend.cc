#include "core/backend.h"

#include "core/cpu/cpu_backend.h"
#include "core/error.h"

#ifdef SHOAL_WITH_CUDA
#include "core/cuda/cuda_device.h"
#endif

namespace shoal {

bool cuda_built() {
#ifdef SHOAL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef SHOAL_WITH_CUDA
  return cuda::visible_device_count();
#else
  return 0;
#endif
}

std::string build_description() {
  std::string text = "shoal " SHOAL_VERSION;
#ifdef SHOAL_WITH_CUDA
  text += ", CUDA support: " + cuda::library_versions();
#else
  text += ", CUDA support: not built (configure with -DSHOAL_CUDA=ON and the toolkit in /usr/local/cuda)";
#endif
  return text;
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  switch (options.device.kind) {
    case DeviceKind::cpu:
      return make_cpu_backend(options.threads);
    case DeviceKind::cuda:
      if (!cuda_built())
        SHOAL_THROW(DeviceError,
                    "device = cuda, but this shoal was built without CUDA (SHOAL_CUDA=OFF or no toolkit found)");
      if (cuda_device_count() == 0) SHOAL_THROW(DeviceError, "device = cuda, but no CUDA GPU is visible");
      SHOAL_THROW(DeviceError, "device = cuda: the CUDA backend is not implemented yet; use device = cpu");
  }
  SHOAL_THROW(InternalError, "unknown device kind");
}

}  // namespace shoal
