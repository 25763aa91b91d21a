#include "core/backend.h"

#include <cstdio>

#include "core/cpu/cpu_backend.h"
#include "core/error.h"

#ifdef SHOAL_WITH_CUDA
#include "core/cuda/cuda_device.h"
#endif

namespace shoal {

namespace {
// The CPU's event: everything issued before it has already finished.
class CompletedEvent final : public DeviceEvent {
 public:
  bool ready() override { return true; }
  void wait() override {}
};
}  // namespace

std::shared_ptr<DeviceEvent> Backend::record_event() { return std::make_shared<CompletedEvent>(); }

std::shared_ptr<DeviceEvent> Backend::copy_to_host_async(const Tensor& src, void* dst) {
  copy_to_host(src, dst);
  return record_event();
}

std::shared_ptr<DeviceEvent> Backend::copy_from_host_async(const void* src, Tensor& dst) {
  copy_from_host(src, dst);
  return record_event();
}

std::string describe_memory(const MemoryStats& stats) {
  char text[160];
  std::snprintf(text, sizeof(text), "device memory: high-water %.1f MiB, reserved %.1f MiB, %zu device allocations",
                static_cast<double>(stats.high_water) / (1 << 20), static_cast<double>(stats.reserved) / (1 << 20),
                stats.device_allocations);
  return text;
}

Tensor Backend::allocate_host(const Shape& shape, DType dtype) { return Tensor::zeros(shape, dtype); }

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

std::string describe_gpus() {
#ifdef SHOAL_WITH_CUDA
  return cuda::describe_devices();
#else
  return "no GPUs: this shoal was built without CUDA";
#endif
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
      SHOAL_REQUIRE(
          options.device.index >= 0 && options.device.index < cuda_device_count(), DeviceError,
          "device = cuda:" << options.device.index << ", but only " << cuda_device_count() << " GPU(s) are visible");
#ifdef SHOAL_WITH_CUDA
      return cuda::make_cuda_backend(options.device.index, options.tf32);
#endif
  }
  SHOAL_THROW(InternalError, "unknown device kind");
}

}  // namespace shoal
