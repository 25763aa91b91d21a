// Cuts a model's flat parameter arena into chunks and assigns contiguous key ranges of chunks
// to servers, balanced by bytes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/partition.h"

namespace shoal {

// chunk_elements is an upper bound; small models get at least 4 chunks per server so that
// every server holds some of the model and pushes can start before backward has finished, but
// no chunk is cut smaller than kMinChunkElements (64 KiB) unless a server's share is smaller.
constexpr std::int64_t kMinChunkElements = 16384;
PartitionTable make_partition(std::int64_t total_elements, std::int64_t chunk_elements,
                              const std::vector<ServerRange>& servers);

}  // namespace shoal
