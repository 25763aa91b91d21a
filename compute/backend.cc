#include "compute/backend.h"

#include <cstdio>

#include "base/error.h"


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

}  // namespace shoal
