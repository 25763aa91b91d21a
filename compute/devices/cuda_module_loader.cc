#include "compute/devices/cuda_module_loader.h"

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <system_error>
#include <vector>

#include "base/error.h"
#include "compute/cuda/module.h"

namespace shoal {

namespace {

constexpr char kModuleFile[] = "libshoal_cuda.so";

std::vector<std::filesystem::path> module_candidates() {
  std::vector<std::filesystem::path> candidates;
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(exe.parent_path() / kModuleFile);
    candidates.push_back(exe.parent_path() / ".." / "lib" / "shoal" / kModuleFile);
  }
#ifdef SHOAL_CUDA_MODULE_BUILD_DIR
  candidates.push_back(std::filesystem::path(SHOAL_CUDA_MODULE_BUILD_DIR) / kModuleFile);
#endif
  return candidates;
}

struct LoadResult {
  const CudaModule* module = nullptr;
  std::string why_not;
};

LoadResult load_once() {
  if (!cuda_module_built())
    return {nullptr, "this shoal was built without CUDA (SHOAL_CUDA=OFF or no toolkit found)"};
  std::string looked;
  for (const auto& path : module_candidates()) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      looked += (looked.empty() ? "" : ", ") + path.parent_path().lexically_normal().string();
      continue;
    }
    // Never closed: CUDA's libraries do not expect to be unloaded while their threads run.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* error = dlerror();
      return {nullptr, "the CUDA module " + path.lexically_normal().string() +
                           " cannot be loaded: " + (error != nullptr ? error : "unknown dlopen error")};
    }
    using Entry = const CudaModule* (*)();
    auto entry = reinterpret_cast<Entry>(dlsym(handle, "shoal_cuda_module_v1"));
    if (entry == nullptr)
      return {nullptr, "the CUDA module " + path.lexically_normal().string() + " has no entry shoal_cuda_module_v1"};
    const CudaModule* module = entry();
    if (module == nullptr || module->abi != kCudaModuleAbi)
      return {nullptr, "the CUDA module " + path.lexically_normal().string() +
                           " is from another build of shoal (ABI " + std::to_string(module ? module->abi : -1) +
                           ", this binary needs " + std::to_string(kCudaModuleAbi) + ")"};
    return {module, ""};
  }
  return {nullptr, std::string("the CUDA module ") + kModuleFile + " is not installed (looked in " + looked + ")"};
}

}  // namespace

bool cuda_module_built() {
#ifdef SHOAL_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool nvidia_driver_present() { return access("/dev/nvidiactl", F_OK) == 0 || access("/proc/driver/nvidia", F_OK) == 0; }

const CudaModule* load_cuda_module(std::string* why_not) {
  static std::once_flag once;
  static LoadResult result;
  std::call_once(once, [] { result = load_once(); });
  if (result.module == nullptr && why_not != nullptr) *why_not = result.why_not;
  return result.module;
}

const CudaModule& require_cuda_module(const std::string& what) {
  std::string why;
  const CudaModule* module = load_cuda_module(&why);
  SHOAL_REQUIRE(module != nullptr, DeviceError, what << ", but " << why);
  return *module;
}

}  // namespace shoal
