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

// Two-level shuffling for data read front to back (tar shards): `group_ends` are the ends of
// contiguous groups of samples (a shard each). The groups are visited in an order seeded by
// (seed, epoch); within a group, each run of `window` consecutive samples is shuffled (a bounded
// shuffle buffer, but a pure function of its arguments, so positions survive a restart).
std::vector<std::int64_t> grouped_epoch_permutation(const std::vector<std::int64_t>& group_ends, std::int64_t window,
                                                    std::uint64_t seed, std::int64_t epoch);

// Cuts [0, count) into shards of `shard_size` samples (the last one may be smaller).
std::vector<DataShard> split_epoch(std::int64_t count, std::int64_t shard_size, std::int64_t epoch);

// Synchronous data parallelism: every rank must take the same number of steps, or an
// all-reduce waits forever. Positions [begin, end) of an epoch's permutation are cut into global
// steps of world * batch samples; at each step rank r takes the r-th run of `batch` positions.
// The tail (fewer than world * batch positions) is one last step split as evenly as possible
// (ranks differ by at most one sample), unless it has fewer positions than ranks: then it is
// skipped this epoch (the next epoch's permutation puts other samples there). The plan is a
// function of its arguments only, so a later world can be re-planned from any position.
struct RankStep {
  std::int64_t begin = 0, end = 0;  // this rank's positions in the permutation
  std::int64_t global = 0;          // samples in this step over every rank
  std::int64_t offset = 0;          // this rank's first sample within the global step
};
std::vector<RankStep> plan_rank_steps(std::int64_t begin, std::int64_t end, std::int64_t batch, int world, int rank);

}  // namespace shoal
