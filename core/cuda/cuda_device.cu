#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

#include <string>

#include "core/cuda/cuda_device.h"

namespace shoal::cuda {

int visible_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

std::string library_versions() {
  int runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  int nccl = 0;
  ncclGetVersion(&nccl);
  std::size_t cudnn = cudnnGetVersion();
  return "CUDA runtime " + std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10) + ", cuDNN " +
         std::to_string(cudnn) + ", NCCL " + std::to_string(nccl) +
         ", GPUs visible: " + std::to_string(visible_device_count());
}

}  // namespace shoal::cuda
