// The coordinator's rendezvous store: the keys sync ranks publish and poll to form their Gloo and
// NCCL worlds (coordinator/client/control_client.h's CoordinatorStore is the ranks' side). A key
// is set (or overwritten) and read back; a read of a key not set yet is "not yet", which the
// rank retries until its own deadline. Bounded: a rank that sets keys in a loop cannot grow the
// coordinator without end.
#pragma once

#include <cstddef>
#include <map>
#include <string>

namespace shoal {

class RendezvousTable {
 public:
  static constexpr std::size_t kMaxKeys = 65536;
  explicit RendezvousTable(std::size_t max_keys = kMaxKeys) : max_keys_(max_keys) {}

  // False when the table is full and `key` is new (an existing key is always overwritten).
  bool set(const std::string& key, std::string value) {
    auto it = values_.find(key);
    if (it != values_.end()) {
      it->second = std::move(value);
      return true;
    }
    if (values_.size() >= max_keys_) return false;
    values_.emplace(key, std::move(value));
    return true;
  }
  // nullptr: not set yet.
  const std::string* get(const std::string& key) const {
    auto it = values_.find(key);
    return it == values_.end() ? nullptr : &it->second;
  }
  std::size_t size() const { return values_.size(); }

 private:
  std::size_t max_keys_;
  std::map<std::string, std::string> values_;
};

}  // namespace shoal
