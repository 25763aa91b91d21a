#include "coordinator/partitioner.h"

#include <algorithm>

#include "base/error.h"

namespace shoal {

PartitionTable make_partition(std::int64_t total, std::int64_t chunk_elements,
                              const std::vector<ServerRange>& servers) {
  SHOAL_ASSERT(total > 0 && chunk_elements > 0 && !servers.empty(), "bad partition request");
  const auto n = static_cast<std::int64_t>(servers.size());
  // At least 4 chunks per server, so a server applies one while the next is on the wire; but
  // no chunk under kMinChunkElements unless a server's share is smaller: below that, another
  // message costs more than the overlap buys (a 4 KB model is one message, not four).
  const std::int64_t floor = std::min(kMinChunkElements, (total + n - 1) / n);
  std::int64_t chunk = std::min(chunk_elements, std::max<std::int64_t>(floor, (total + 4 * n - 1) / (4 * n)));
  PartitionTable t;
  t.total_elements = total;
  for (std::int64_t offset = 0; offset < total; offset += chunk)
    t.chunks.push_back(ChunkSpan{offset, std::min(chunk, total - offset)});
  // Server s takes chunks until the running total passes (s + 1) / n of the bytes.
  t.servers = servers;
  std::uint32_t key = 0;
  std::int64_t covered = 0;
  for (std::int64_t s = 0; s < n; ++s) {
    t.servers[s].first_key = key;
    std::int64_t target = total * (s + 1) / n;
    while (key < t.chunks.size() && (s == n - 1 || covered + t.chunks[key].numel / 2 < target)) {
      covered += t.chunks[key].numel;
      ++key;
    }
    t.servers[s].end_key = key;
  }
  return t;
}

}  // namespace shoal
