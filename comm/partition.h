// The partition table: the model's flat parameter arena cut into chunks (key = chunk index),
// and contiguous key ranges owned by each parameter server. The coordinator makes it
// (coordinator/partitioner.h), everyone else reads it from the wire.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/wire/shoal.capnp.h"

namespace shoal {

// Chunks up to this many bytes together share a push or a pull reply; a larger chunk goes alone.
constexpr std::int64_t kCoalesceBytes = 256 << 10;

struct ChunkSpan {
  std::int64_t offset = 0;
  std::int64_t numel = 0;
};

struct ServerRange {
  std::string id;
  std::string address;
  std::uint32_t first_key = 0, end_key = 0;  // [first_key, end_key)
};

struct PartitionTable {
  std::uint64_t version = 0;
  std::int64_t total_elements = 0;
  std::vector<ChunkSpan> chunks;
  std::vector<ServerRange> servers;
  std::vector<std::string> live_workers;
  std::int64_t steps_per_epoch = 1;
  std::int64_t train_samples = 0;
  std::string restore;            // the checkpoint directory the job resumes from ("": none)
  std::uint64_t start_clock = 0;  // where a worker that joins a running job starts
  // Elastic sync jobs, after a rank was lost: the requester's rank in the world of generation
  // `version` (-1: never re-formed), its size, and each member's rank in the previous world
  // (-1: it joined; joiners come last).
  int world_rank = -1;
  int world_size = 0;
  std::vector<int> previous_ranks;

  // Index into servers of the owner of `key`; throws InternalError if none.
  std::int64_t server_elements(std::size_t server) const;

  void to_wire(wire::PartitionTable::Builder out) const;
  // Checks consistency (chunks contiguous and covering the arena, ranges disjoint and
  // covering every key); throws ProtocolError on a bad table.
  static PartitionTable from_wire(wire::PartitionTable::Reader in);
};

}  // namespace shoal
