#include "coordinator/elastic_world.h"

#include <algorithm>
#include <utility>

namespace shoal {

ElasticSyncWorld::ElasticSyncWorld(SyncBook& book, std::map<std::string, int> ranks)
    : book_(book), rank_(std::move(ranks)) {}

void ElasticSyncWorld::remove(const std::string& lost, TimePoint now, const Alive& alive) {
  book_.remove(lost, now);
  rank_.erase(lost);
  renumber(alive, "");
}

bool ElasticSyncWorld::can_admit() const {
  return !pending_.empty() && !book_.finished() && book_.training_epoch() >= 0;
}

void ElasticSyncWorld::admit_pending(const Alive& alive, const std::function<void(const std::string&)>& reformed) {
  for (const std::string& id : pending_) {
    book_.add(id);
    renumber(alive, id);
    reformed(id);
  }
  pending_.clear();
}

void ElasticSyncWorld::renumber(const Alive& alive, const std::string& joined) {
  // The survivors keep their order: the new ranks are their places in the old world, counted;
  // a joiner comes after them.
  std::vector<std::pair<int, std::string>> order;
  for (const auto& [id, rank] : rank_)
    if (id != joined && alive(id)) order.emplace_back(rank, id);
  std::sort(order.begin(), order.end());
  rank_.clear();
  previous_.clear();
  for (std::size_t i = 0; i < order.size(); ++i) {
    previous_[order[i].second] = order[i].first;
    rank_[order[i].second] = static_cast<int>(i);
  }
  if (!joined.empty()) {
    previous_[joined] = -1;
    rank_[joined] = static_cast<int>(order.size());
  }
  size_ = static_cast<int>(rank_.size());
}

std::optional<ElasticSyncWorld::Place> ElasticSyncWorld::place(const std::string& id) const {
  auto it = rank_.find(id);
  if (size_ == 0 || it == rank_.end()) return std::nullopt;
  Place p;
  p.rank = it->second;
  p.size = size_;
  p.previous_ranks.assign(static_cast<std::size_t>(size_), 0);
  for (const auto& [member, rank] : rank_) p.previous_ranks[static_cast<std::size_t>(rank)] = previous_.at(member);
  return p;
}

}  // namespace shoal
