#include "comm/partition.h"

#include <algorithm>

#include "base/error.h"

namespace shoal {

std::int64_t PartitionTable::server_elements(std::size_t server) const {
  std::int64_t n = 0;
  for (std::uint32_t k = servers[server].first_key; k < servers[server].end_key; ++k) n += chunks[k].numel;
  return n;
}

void PartitionTable::to_wire(wire::PartitionTable::Builder out) const {
  out.setVersion(version);
  out.setTotalElements(static_cast<std::uint64_t>(total_elements));
  out.setStepsPerEpoch(static_cast<std::uint64_t>(steps_per_epoch));
  out.setTrainSamples(static_cast<std::uint64_t>(train_samples));
  out.setRestore(restore);
  out.setStartClock(start_clock);
  auto c = out.initChunks(static_cast<unsigned>(chunks.size()));
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    c[i].setOffset(static_cast<std::uint64_t>(chunks[i].offset));
    c[i].setNumel(static_cast<std::uint32_t>(chunks[i].numel));
  }
  auto s = out.initServers(static_cast<unsigned>(servers.size()));
  for (std::size_t i = 0; i < servers.size(); ++i) {
    s[i].setId(servers[i].id);
    s[i].setAddress(servers[i].address);
    s[i].setFirstKey(servers[i].first_key);
    s[i].setEndKey(servers[i].end_key);
  }
  auto w = out.initLiveWorkers(static_cast<unsigned>(live_workers.size()));
  for (std::size_t i = 0; i < live_workers.size(); ++i) w.set(static_cast<unsigned>(i), live_workers[i]);
  out.setWorldRank(world_rank);
  out.setWorldSize(world_size);
  auto p = out.initPreviousRanks(static_cast<unsigned>(previous_ranks.size()));
  for (std::size_t i = 0; i < previous_ranks.size(); ++i) p.set(static_cast<unsigned>(i), previous_ranks[i]);
}

PartitionTable PartitionTable::from_wire(wire::PartitionTable::Reader in) {
  PartitionTable t;
  t.version = in.getVersion();
  t.total_elements = static_cast<std::int64_t>(in.getTotalElements());
  t.steps_per_epoch = static_cast<std::int64_t>(in.getStepsPerEpoch());
  t.train_samples = static_cast<std::int64_t>(in.getTrainSamples());
  t.restore = in.getRestore().cStr();
  t.start_clock = in.getStartClock();
  SHOAL_REQUIRE(t.steps_per_epoch > 0, ProtocolError, "partition table with 0 steps per epoch");
  std::int64_t next = 0;
  for (auto c : in.getChunks()) {
    SHOAL_REQUIRE(static_cast<std::int64_t>(c.getOffset()) == next && c.getNumel() > 0, ProtocolError,
                  "partition table chunks are not contiguous at element " << next);
    t.chunks.push_back(ChunkSpan{next, c.getNumel()});
    next += c.getNumel();
  }
  SHOAL_REQUIRE(next == t.total_elements && !t.chunks.empty(), ProtocolError,
                "partition table chunks cover " << next << " of " << t.total_elements << " elements");
  std::uint32_t key = 0;
  for (auto s : in.getServers()) {
    SHOAL_REQUIRE(s.getFirstKey() == key && s.getEndKey() >= s.getFirstKey(), ProtocolError,
                  "partition table key ranges are not contiguous at key " << key);
    t.servers.push_back(ServerRange{s.getId().cStr(), s.getAddress().cStr(), s.getFirstKey(), s.getEndKey()});
    key = s.getEndKey();
  }
  // A sync job has no servers: its table only announces that the job started.
  SHOAL_REQUIRE(key == t.chunks.size() || t.servers.empty(), ProtocolError,
                "partition table servers own " << key << " of " << t.chunks.size() << " chunks");
  for (auto w : in.getLiveWorkers()) t.live_workers.emplace_back(w.cStr());
  t.world_rank = in.getWorldRank();
  t.world_size = in.getWorldSize();
  for (auto r : in.getPreviousRanks()) t.previous_ranks.push_back(r);
  if (t.world_rank >= 0) {
    SHOAL_REQUIRE(t.world_size > t.world_rank && static_cast<std::size_t>(t.world_size) == t.previous_ranks.size(),
                  ProtocolError,
                  "partition table names rank " << t.world_rank << " of a world of " << t.world_size << " with "
                                                << t.previous_ranks.size() << " previous ranks");
    // Members of the previous world keep their order; ranks that joined (-1) come after them.
    // Rank 0 hosts the coordinator: it is always a member of the previous world.
    int last = -1;
    bool joiners = false;
    for (int r : t.previous_ranks) {
      SHOAL_REQUIRE(r >= -1 && !(r >= 0 && (joiners || r <= last)), ProtocolError,
                    "partition table previous ranks are not increasing, then -1 for the ranks that joined");
      if (r < 0) joiners = true;
      last = std::max(last, r);
    }
    SHOAL_REQUIRE(t.previous_ranks[0] >= 0, ProtocolError,
                  "partition table: the first rank of a re-formed world is not from the previous one");
  }
  return t;
}

}  // namespace shoal
