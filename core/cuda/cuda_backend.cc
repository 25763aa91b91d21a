// Placeholder replaced by the CUDA backend (work in progress; not committed).
#include <memory>
#include "core/backend.h"
#include "core/cuda/cuda_device.h"
#include "core/error.h"
namespace shoal::cuda {
std::unique_ptr<Backend> make_cuda_backend(int, bool) { SHOAL_THROW(DeviceError, "CUDA backend: work in progress"); }
}  // namespace shoal::cuda
