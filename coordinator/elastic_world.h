// The world of an elastic sync job (sync.elastic) as the coordinator keeps it: each live rank's
// place in the current world and in the previous one, and the ranks that registered with the
// running job and wait to be admitted. A lost rank leaves at once; the survivors keep their
// order (their new ranks are their old places, counted) and a joiner comes after them. A joiner
// is admitted only while every rank trains the same epoch (none has reported it yet): the
// members then agree on the state at a step of that epoch. Every change is recorded in the
// job's SyncBook too (the epoch's plan is re-cut for the new world).
//
// It keeps no socket and no membership (who is alive is asked through `Alive`), so it is
// unit-tested without a cluster (tests/coordinator/coordinator_pieces_test.cc).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "coordinator/sync_book.h"

namespace shoal {

class ElasticSyncWorld {
 public:
  using Alive = std::function<bool(const std::string&)>;
  using TimePoint = std::chrono::steady_clock::time_point;

  // The world the job starts with: worker id -> rank.
  ElasticSyncWorld(SyncBook& book, std::map<std::string, int> ranks);

  const SyncBook& book() const { return book_; }
  bool contains(const std::string& id) const { return rank_.count(id) > 0; }
  std::size_t size() const { return rank_.size(); }
  // `lost` leaves the world (and the book); the live survivors are renumbered.
  void remove(const std::string& lost, TimePoint now, const Alive& alive);

  // Registered with the running job, not yet admitted.
  void add_pending(const std::string& id) { pending_.insert(id); }
  bool pending(const std::string& id) const { return pending_.count(id) > 0; }
  bool drop_pending(const std::string& id) { return pending_.erase(id) > 0; }
  // Whether the waiting joiners can be admitted now: every rank trains the same epoch.
  bool can_admit() const;
  // Admits every waiting joiner, one re-formed world each; calls `reformed(id)` after each.
  void admit_pending(const Alive& alive, const std::function<void(const std::string&)>& reformed);

  // A rank's place in the re-formed world: its rank, the world's size and, for every new rank,
  // the rank it had in the previous world (-1: it joined). nullopt before the first re-forming
  // (the ranks are those of registration) or for a rank not in the world.
  struct Place {
    int rank = 0, size = 0;
    std::vector<int> previous_ranks;
  };
  std::optional<Place> place(const std::string& id) const;
  bool reformed() const { return size_ > 0; }

 private:
  void renumber(const Alive& alive, const std::string& joined);

  SyncBook& book_;
  std::map<std::string, int> rank_, previous_;
  int size_ = 0;  // 0 until the world is re-formed the first time
  std::set<std::string> pending_;
};

}  // namespace shoal
