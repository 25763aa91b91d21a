// What the CUDA build can see at run time: GPUs visible to this process and the versions of the
// CUDA runtime, cuDNN and NCCL it was linked with. Built only when SHOAL_CUDA finds a toolkit.
#pragma once

#include <string>

namespace shoal::cuda {

int visible_device_count();  // 0 when there is no driver or no GPU
std::string library_versions();

}  // namespace shoal::cuda
