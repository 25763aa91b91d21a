// Data shards: an epoch is a seeded permutation of the dataset cut into contiguous ranges of
// that permutation. The single-process trainer walks the shards of an epoch in order; in a
// distributed job the coordinator leases them to workers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shoal {

struct DataShard {
  std::int64_t epoch = 0;
  std::int64_t index = 0;  // shard number within the epoch
  std::int64_t begin = 0;  // positions [begin, end) of the epoch's permutation
  std::int64_t end = 0;
  std::int64_t size() const { return end - begin; }
  std::string str() const;
};

// The order in which samples are visited in `epoch`: a Fisher-Yates shuffle seeded by
// (seed, epoch), identical on every process.
std::vector<std::int64_t> epoch_permutation(std::int64_t count, std::uint64_t seed, std::int64_t epoch);

// Cuts [0, count) into shards of `shard_size` samples (the last one may be smaller).
std::vector<DataShard> split_epoch(std::int64_t count, std::int64_t shard_size, std::int64_t epoch);

}  // namespace shoal
