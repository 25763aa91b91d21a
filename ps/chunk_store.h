// The values of a parameter server's chunks, versioned. Each chunk's current values live in a
// reference-counted buffer. A pull reply hands that buffer to ZeroMQ as a zero-copy frame that
// holds a reference until ZeroMQ is done with it (for tcp:// once the bytes are in the kernel,
// for inproc:// once the receiver dropped the frame). An update must never write into a
// buffer someone still holds: `writable()` returns the current buffer when only the store
// holds it, and otherwise moves the chunk to a buffer nobody holds (a spare one, or a new
// one) with a copy of the current values. The held buffer keeps the old version, unchanged,
// for as long as it is held. Free buffers beyond one spare per chunk are given back.
//
// The same hold gives a consistent snapshot (`snapshot()`): every chunk's buffer at one
// moment, kept unchanged while updates go on into other buffers, for a checkpoint to write in
// the background.
//
// Threads: the store is owned by one thread (the server's), which alone calls every member;
// `writable()` of different chunks may run on several threads at once. Holds are released from
// any thread (ZeroMQ's I/O thread, a receiver, a checkpoint writer).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>
#include <zmq.hpp>

#include "compute/tensor.h"

namespace shoal {

class ChunkStore {
 public:
  // One buffer of one chunk's values at one version; `holds` counts holders besides the store.
  struct Buffer {
    explicit Buffer(std::int64_t numel) : values(Tensor::zeros(Shape{numel})) {}
    Tensor values;
    std::uint64_t version = 0;
    std::atomic<int> holds{0};
    bool free() const { return holds.load(std::memory_order_acquire) == 0; }
  };

  // A hold on every chunk's buffer at one moment: the values stay as they were until released.
  class Snapshot {
   public:
    Snapshot() = default;
    Snapshot(Snapshot&&) noexcept = default;
    Snapshot& operator=(Snapshot&& other) noexcept;
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;
    ~Snapshot() { release(); }
    std::size_t size() const { return buffers_.size(); }
    const float* values(std::size_t chunk) const { return buffers_[chunk]->values.data<float>(); }
    std::int64_t numel(std::size_t chunk) const { return buffers_[chunk]->values.numel(); }
    std::uint64_t version(std::size_t chunk) const { return buffers_[chunk]->version; }
    void release();

   private:
    friend class ChunkStore;
    std::vector<std::shared_ptr<Buffer>> buffers_;
  };

  struct Stats {
    std::uint64_t zero_copy_frames = 0;  // pull frames sent from a buffer without copying it
    std::uint64_t moved = 0;             // updates that found their buffer held and moved to another
    std::uint64_t buffers = 0;           // buffers allocated, all chunks together
  };

  ChunkStore() = default;
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Adds a chunk holding a copy of values[0, numel); returns its index.
  std::size_t add(const float* values, std::int64_t numel);
  std::size_t size() const { return chunks_.size(); }

  // The current values, read-only.
  const Tensor& values(std::size_t chunk) const { return chunks_[chunk].current->values; }
  std::uint64_t version(std::size_t chunk) const { return chunks_[chunk].current->version; }
  // The values to update in place for the next version (its version is already counted):
  // never a buffer that anyone holds. Moving to another buffer copies the values.
  Tensor& writable(std::size_t chunk);
  // A zero-copy frame of the current values that holds the buffer until ZeroMQ releases it.
  zmq::message_t frame(std::size_t chunk);
  Snapshot snapshot();

  Stats stats() const;
  // Buffers of this chunk, the current one included (tests).
  std::size_t buffer_count(std::size_t chunk) const { return chunks_[chunk].buffers.size(); }

 private:
  struct Chunk {
    // Every buffer of this chunk. A hold also owns its buffer, so a frame ZeroMQ releases after
    // the store is gone (a socket closed with messages queued) still finds it.
    std::vector<std::shared_ptr<Buffer>> buffers;
    std::shared_ptr<Buffer> current;
    std::uint64_t frames = 0, moved = 0;  // per chunk, so chunks update on several threads
  };
  static void release_frame(void* data, void* hint);
  std::vector<Chunk> chunks_;
};

}  // namespace shoal
