#include "compute/cuda/cuda_device.h"

#include <cuda_runtime.h>
#include <cudnn.h>
#include <nccl.h>

#include <cstdio>
#include <string>

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
  // cuDNN 9 and NCCL 2.9+ encode versions as major * 10000 + minor * 100 + patch.
  auto dotted = [](std::size_t v) {
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
  };
  return "CUDA runtime " + std::to_string(runtime / 1000) + "." + std::to_string(runtime % 1000 / 10) + ", cuDNN " +
         dotted(cudnn) + ", NCCL " + dotted(static_cast<std::size_t>(nccl)) +
         ", GPUs visible: " + std::to_string(visible_device_count());
}

std::string describe_devices() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return std::string("no GPUs visible (") + cudaGetErrorString(status) + ")";
  }
  if (count == 0) return "no GPUs visible";
  std::string text;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      text += "GPU " + std::to_string(i) + ": (properties unavailable)\n";
      continue;
    }
    char line[512];
    std::snprintf(line, sizeof(line), "GPU %d: %s, %.1f GiB, compute capability %d.%d, %d SMs, PCI %04x:%02x:%02x\n", i,
                  prop.name, static_cast<double>(prop.totalGlobalMem) / (1u << 30), prop.major, prop.minor,
                  prop.multiProcessorCount, prop.pciDomainID, prop.pciBusID, prop.pciDeviceID);
    text += line;
  }
  if (!text.empty()) text.pop_back();
  return text;
}

}  // namespace shoal::cuda
