// A caching allocator for the CUDA backend: each backend has one for its GPU's memory
// (cudaMalloc) and one for pinned host staging buffers (cudaHostAlloc). Training allocates
// the same sizes every step, so a freed block goes to a free list for its size class and the
// next request of that class takes it back: after the first step no call reaches the CUDA
// allocator, whose cudaMalloc/cudaFree synchronize the device.
//
// Size classes: requests below 1 MiB round up to a multiple of 512 bytes, larger ones to a
// multiple of 2 MiB; a cached block serves only requests of its own class (no splitting).
// When cudaMalloc runs out of memory the cache is handed back to the device and the request
// retried once; a second failure throws DeviceError with the size and the pool's statistics.
//
// Blocks are reused in host order, which is safe for device memory used on one stream (the
// backend's compute stream): work queued on a freed block runs before work queued on its next
// owner. Work on other streams must hold the tensor until it is done (the backend's async
// copies do). Tensors come out as Storage whose deleter returns the block and holds the
// allocator by shared_ptr, so tensors may outlive the backend. Thread-safe.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "compute/backend.h"
#include "compute/tensor.h"

namespace shoal::cuda {

enum class MemoryKind { device, pinned_host };

class CachingAllocator : public std::enable_shared_from_this<CachingAllocator> {
 public:
  struct Block {
    void* ptr = nullptr;
    std::size_t bytes = 0;  // the size class, >= the request
  };

  // Device memory on GPU `device`, or pinned host memory (made while `device` is current).
  static std::shared_ptr<CachingAllocator> create(MemoryKind kind, int device);
  ~CachingAllocator();  // frees the cache; no block is out, since every Storage holds a reference
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  // The rounded size a request of `bytes` takes (0 for 0).
  static std::size_t size_class(std::size_t bytes);

  // A block of size_class(bytes) bytes, uninitialised; an empty block for 0 bytes.
  Block allocate(std::size_t bytes);
  // Takes a block back into the cache.
  void release(Block block);
  // Frees a block to the system at once instead of caching it (a one-off large scratch buffer).
  void release_to_system(Block block);
  // Storage of `bytes` (the tensor's view) over a pooled block; its deleter calls release().
  std::shared_ptr<Storage> allocate_storage(std::size_t bytes);

  MemoryStats stats() const;
  const char* name() const;  // "device memory" / "pinned host memory"

 private:
  CachingAllocator(MemoryKind kind, int device) : kind_(kind), device_(device) {}
  // Called with mutex_ held.
  void* system_allocate(std::size_t bytes);
  void free_cached_locked();
  void system_free(void* ptr, std::size_t bytes);

  const MemoryKind kind_;
  const int device_;
  mutable std::mutex mutex_;
  std::unordered_map<std::size_t, std::vector<void*>> free_;  // size class -> cached blocks
  MemoryStats stats_;
};

}  // namespace shoal::cuda
