#include "ps/chunk_store.h"

#include <cstring>
#include <vector>

#include "base/error.h"

namespace shoal {

namespace {
// A hold: a reference that keeps the buffer allocated, and a count that keeps it unwritten.
std::shared_ptr<ChunkStore::Buffer>* hold(const std::shared_ptr<ChunkStore::Buffer>& buffer) {
  buffer->holds.fetch_add(1, std::memory_order_relaxed);  // only the owning thread adds holds
  return new std::shared_ptr<ChunkStore::Buffer>(buffer);
}
void unhold(std::shared_ptr<ChunkStore::Buffer>* held) {
  // Release: every read of the bytes by this holder happens before the owner's next write.
  (*held)->holds.fetch_sub(1, std::memory_order_acq_rel);
  delete held;
}
}  // namespace

ChunkStore::Snapshot& ChunkStore::Snapshot::operator=(Snapshot&& other) noexcept {
  if (this != &other) {
    release();
    buffers_ = std::move(other.buffers_);
  }
  return *this;
}

void ChunkStore::Snapshot::release() {
  for (auto& b : buffers_) b->holds.fetch_sub(1, std::memory_order_acq_rel);
  buffers_.clear();
}

std::size_t ChunkStore::add(const float* values, std::int64_t numel) {
  SHOAL_ASSERT(numel > 0, "a chunk needs at least one value");
  Chunk c;
  c.buffers.push_back(std::make_shared<Buffer>(numel));
  c.current = c.buffers.back();
  std::memcpy(c.current->values.raw(), values, static_cast<std::size_t>(numel) * sizeof(float));
  chunks_.push_back(std::move(c));
  return chunks_.size() - 1;
}

Tensor& ChunkStore::writable(std::size_t chunk) {
  Chunk& c = chunks_[chunk];
  std::shared_ptr<Buffer> old = c.current;
  if (!old->free()) {
    std::shared_ptr<Buffer> spare;
    for (auto& b : c.buffers)
      if (b != old && b->free()) spare = b;
    if (!spare) {
      spare = std::make_shared<Buffer>(old->values.numel());
      c.buffers.push_back(spare);
    }
    std::memcpy(spare->values.raw(), old->values.raw(), old->values.bytes());
    c.current = spare;
    ++c.moved;
  }
  c.current->version = old->version + 1;
  if (c.buffers.size() > 2) {
    // A burst of slow readers must not pin its buffers for good: keep one free spare at most.
    std::size_t spares = 0;
    std::erase_if(c.buffers,
                  [&](const std::shared_ptr<Buffer>& b) { return b != c.current && b->free() && ++spares > 1; });
  }
  return c.current->values;
}

void ChunkStore::release_frame(void* /*data*/, void* hint) { unhold(static_cast<std::shared_ptr<Buffer>*>(hint)); }

zmq::message_t ChunkStore::frame(std::size_t chunk) {
  Chunk& c = chunks_[chunk];
  ++c.frames;
  return zmq::message_t(c.current->values.raw(), c.current->values.bytes(), release_frame, hold(c.current));
}

ChunkStore::Snapshot ChunkStore::snapshot() {
  Snapshot s;
  for (auto& c : chunks_) {
    c.current->holds.fetch_add(1, std::memory_order_relaxed);
    s.buffers_.push_back(c.current);
  }
  return s;
}

ChunkStore::Stats ChunkStore::stats() const {
  Stats s;
  for (const auto& c : chunks_) {
    s.zero_copy_frames += c.frames;
    s.moved += c.moved;
    s.buffers += c.buffers.size();
  }
  return s;
}

}  // namespace shoal
