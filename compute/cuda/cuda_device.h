// What the CUDA build can see at run time: GPUs visible to this process and the versions of the
// CUDA runtime, cuDNN and NCCL it was linked with; and the CUDA backend's factory. Built only
// when SHOAL_CUDA finds a toolkit.
#pragma once

#include <memory>
#include <string>

namespace shoal {
class Backend;
}

namespace shoal::cuda {

int visible_device_count();  // 0 when there is no driver or no GPU
std::string library_versions();
// One line per visible GPU: index, name, memory, compute capability; or why there is none.
std::string describe_devices();

// The CUDA backend on GPU `device` (compute/cuda/cuda_backend.cc).
std::unique_ptr<Backend> make_cuda_backend(int device, bool tf32);

}  // namespace shoal::cuda
