#include "compute/cuda/memory_pool.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "compute/cuda/check.h"
#include "base/error.h"

namespace shoal::cuda {
namespace {

constexpr std::size_t kSmallLimit = std::size_t{1} << 20;  // below: 512-byte classes
constexpr std::size_t kSmallQuantum = 512;
constexpr std::size_t kLargeQuantum = std::size_t{2} << 20;

std::size_t round_up(std::size_t bytes, std::size_t quantum) { return (bytes + quantum - 1) / quantum * quantum; }

double mib(std::size_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

// Makes `device` current for a scope and restores the caller's device after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) : device_(device) {
    SHOAL_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device_) SHOAL_CUDA_CHECK(cudaSetDevice(device_));
  }
  ~DeviceGuard() {
    if (previous_ != device_) SHOAL_CUDA_WARN(cudaSetDevice(previous_));
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = -1;
};

}  // namespace

std::shared_ptr<CachingAllocator> CachingAllocator::create(MemoryKind kind, int device) {
  return std::shared_ptr<CachingAllocator>(new CachingAllocator(kind, device));
}

CachingAllocator::~CachingAllocator() {
  // Runs when the backend and every tensor it made are gone, possibly at process exit after
  // the runtime has unloaded (then there is nothing left to free).
  int previous = -1;
  if (!SHOAL_CUDA_WARN(cudaGetDevice(&previous))) return;
  if (previous != device_ && !SHOAL_CUDA_WARN(cudaSetDevice(device_))) return;
  for (auto& [size, blocks] : free_)
    for (void* ptr : blocks) {
      if (kind_ == MemoryKind::device)
        SHOAL_CUDA_WARN(cudaFree(ptr));
      else
        SHOAL_CUDA_WARN(cudaFreeHost(ptr));
    }
  if (previous != device_) SHOAL_CUDA_WARN(cudaSetDevice(previous));
}

std::size_t CachingAllocator::size_class(std::size_t bytes) {
  if (bytes == 0) return 0;
  return bytes < kSmallLimit ? round_up(bytes, kSmallQuantum) : round_up(bytes, kLargeQuantum);
}

const char* CachingAllocator::name() const {
  return kind_ == MemoryKind::device ? "device memory" : "pinned host memory";
}

CachingAllocator::Block CachingAllocator::allocate(std::size_t bytes) {
  const std::size_t size = size_class(bytes);
  if (size == 0) return {};
  std::lock_guard lock(mutex_);
  void* ptr = nullptr;
  auto cached = free_.find(size);
  if (cached != free_.end() && !cached->second.empty()) {
    ptr = cached->second.back();
    cached->second.pop_back();
  } else {
    ptr = system_allocate(size);
  }
  stats_.in_use += size;
  stats_.high_water = std::max(stats_.high_water, stats_.in_use);
  return {ptr, size};
}

void CachingAllocator::release(Block block) {
  if (block.ptr == nullptr) return;
  std::lock_guard lock(mutex_);
  free_[block.bytes].push_back(block.ptr);
  stats_.in_use -= block.bytes;
}

void CachingAllocator::release_to_system(Block block) {
  if (block.ptr == nullptr) return;
  std::lock_guard lock(mutex_);
  DeviceGuard guard(device_);
  system_free(block.ptr, block.bytes);
  stats_.in_use -= block.bytes;
}

std::shared_ptr<Storage> CachingAllocator::allocate_storage(std::size_t bytes) {
  Block block = allocate(bytes);
  if (block.ptr == nullptr) return std::make_shared<Storage>(nullptr, 0, nullptr);
  try {
    return std::make_shared<Storage>(block.ptr, bytes,
                                     [self = shared_from_this(), block](void*) { self->release(block); });
  } catch (...) {
    release(block);
    throw;
  }
}

MemoryStats CachingAllocator::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

void* CachingAllocator::system_allocate(std::size_t bytes) {
  DeviceGuard guard(device_);
  auto attempt = [&](void** ptr) {
    return kind_ == MemoryKind::device ? cudaMalloc(ptr, bytes) : cudaHostAlloc(ptr, bytes, cudaHostAllocPortable);
  };
  void* ptr = nullptr;
  cudaError_t status = attempt(&ptr);
  if (status == cudaErrorMemoryAllocation) {
    static_cast<void>(cudaGetLastError());  // clears the failure handled here
    free_cached_locked();
    status = attempt(&ptr);
    if (status == cudaErrorMemoryAllocation) {
      static_cast<void>(cudaGetLastError());
      SHOAL_THROW(DeviceError, "cuda:" << device_ << ": out of " << name() << " allocating " << bytes << " bytes ("
                                       << mib(bytes) << " MiB), even after freeing the cache; "
                                       << describe_memory(stats_) << ", " << mib(stats_.in_use) << " MiB in use");
    }
  }
  const std::string call = std::string(kind_ == MemoryKind::device ? "cudaMalloc" : "cudaHostAlloc") + " of " +
                           std::to_string(bytes) + " bytes";
  check_cuda(status, call.c_str());
  stats_.reserved += bytes;
  ++stats_.device_allocations;
  return ptr;
}

void CachingAllocator::free_cached_locked() {
  bool any = false;
  for (const auto& [size, blocks] : free_) any = any || !blocks.empty();
  if (!any) return;
  // Cached blocks may still be read by queued kernels of their previous owner.
  SHOAL_CUDA_CHECK(cudaDeviceSynchronize());
  for (auto& [size, blocks] : free_) {
    for (void* ptr : blocks) system_free(ptr, size);
    blocks.clear();
  }
}

void CachingAllocator::system_free(void* ptr, std::size_t bytes) {
  if (kind_ == MemoryKind::device)
    SHOAL_CUDA_CHECK(cudaFree(ptr));
  else
    SHOAL_CUDA_CHECK(cudaFreeHost(ptr));
  stats_.reserved -= bytes;
}

}  // namespace shoal::cuda
