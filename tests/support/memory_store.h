// A RendezvousStore in memory, shared by the threads of one test that form a Gloo world
// without a coordinator (the coordinator's store is exercised by the in-process and process
// tests).
#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "collective/collective.h"

namespace shoal::testing {

class MemoryStore final : public RendezvousStore {
 public:
  void set(const std::string& key, const std::vector<char>& value) override {
    std::lock_guard lock(mutex_);
    map_[key] = value;
  }
  std::optional<std::vector<char>> try_get(const std::string& key) override {
    std::lock_guard lock(mutex_);
    auto it = map_.find(key);
    if (it == map_.end()) return std::nullopt;
    return it->second;
  }

 private:
  std::mutex mutex_;
  std::map<std::string, std::vector<char>> map_;
};

}  // namespace shoal::testing
