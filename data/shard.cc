#include "data/shard.h"

#include <algorithm>
#include <numeric>

#include "base/error.h"
#include "compute/rng.h"

namespace shoal {

std::string DataShard::str() const {
  return "epoch " + std::to_string(epoch) + " shard " + std::to_string(index) + " [" + std::to_string(begin) + ", " +
         std::to_string(end) + ")";
}

std::vector<std::int64_t> epoch_permutation(std::int64_t count, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  Rng rng(hash_combine(seed, 0x5348554646ULL + static_cast<std::uint64_t>(epoch)));
  for (std::int64_t i = count - 1; i > 0; --i) {
    auto j = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(i + 1)));
    std::swap(order[i], order[j]);
  }
  return order;
}

std::vector<std::int64_t> grouped_epoch_permutation(const std::vector<std::int64_t>& group_ends, std::int64_t window,
                                                    std::uint64_t seed, std::int64_t epoch) {
  SHOAL_ASSERT(window > 0, "shuffle window must be positive");
  const auto groups = static_cast<std::int64_t>(group_ends.size());
  std::vector<std::int64_t> group_order(static_cast<std::size_t>(groups));
  std::iota(group_order.begin(), group_order.end(), 0);
  Rng rng(hash_combine(seed, 0x47524f5550ULL + static_cast<std::uint64_t>(epoch)));
  for (std::int64_t i = groups - 1; i > 0; --i)
    std::swap(group_order[i], group_order[static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(i + 1)))]);
  std::vector<std::int64_t> order;
  order.reserve(group_ends.empty() ? 0 : static_cast<std::size_t>(group_ends.back()));
  for (std::int64_t g : group_order) {
    const std::int64_t begin = g == 0 ? 0 : group_ends[g - 1], end = group_ends[g];
    Rng local(hash_combine(hash_combine(seed, static_cast<std::uint64_t>(epoch)), 0x57494e44ULL + static_cast<std::uint64_t>(g)));
    for (std::int64_t w = begin; w < end; w += window) {
      const std::size_t first = order.size();
      for (std::int64_t i = w; i < std::min(end, w + window); ++i) order.push_back(i);
      for (std::size_t i = order.size() - 1; i > first; --i)
        std::swap(order[i], order[first + local.below(i - first + 1)]);
    }
  }
  return order;
}

std::vector<DataShard> split_epoch(std::int64_t count, std::int64_t shard_size, std::int64_t epoch) {
  SHOAL_ASSERT(shard_size > 0, "shard size must be positive");
  std::vector<DataShard> shards;
  for (std::int64_t begin = 0, i = 0; begin < count; begin += shard_size, ++i)
    shards.push_back(DataShard{epoch, i, begin, std::min(count, begin + shard_size)});
  return shards;
}

std::vector<RankStep> plan_rank_steps(std::int64_t begin, std::int64_t end, std::int64_t batch, int world, int rank) {
  std::vector<RankStep> steps;
  if (world < 1 || rank < 0 || rank >= world || batch < 1 || end <= begin) return steps;
  const std::int64_t w = world, r = rank, global = w * batch;
  std::int64_t at = begin;
  for (; end - at >= global; at += global)
    steps.push_back(RankStep{at + r * batch, at + (r + 1) * batch, global, r * batch});
  const std::int64_t tail = end - at;
  if (tail >= w) {
    const std::int64_t base = tail / w, extra = tail % w;
    const std::int64_t first = at + r * base + std::min(r, extra);
    steps.push_back(RankStep{first, first + base + (r < extra ? 1 : 0), tail, first - at});
  }
  return steps;
}

}  // namespace shoal
