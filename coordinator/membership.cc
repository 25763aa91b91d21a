#include "coordinator/membership.h"

#include <algorithm>
#include <set>

#include "base/error.h"

namespace shoal {

const char* role_name(wire::Role role) {
  switch (role) {
    case wire::Role::COORDINATOR:
      return "coordinator";
    case wire::Role::SERVER:
      return "ps";
    case wire::Role::WORKER:
      return "worker";
  }
  return "unknown";
}

const Member& Membership::add(wire::Role role, int rank, const std::string& address, Clock::time_point now) {
  SHOAL_REQUIRE(role != wire::Role::COORDINATOR, ProtocolError, "a coordinator cannot register with a coordinator");
  if (rank < 0) {
    std::set<int> used;
    for (const auto& [id, m] : members_)
      if (m.role == role && m.alive) used.insert(m.rank);
    rank = 0;
    while (used.count(rank)) ++rank;
  }
  std::string id = std::string(role_name(role)) + "." + std::to_string(rank);
  auto it = members_.find(id);
  SHOAL_REQUIRE(it == members_.end() || !it->second.alive, ProtocolError, id << " is already registered and alive");
  Member m;
  m.id = id;
  m.role = role;
  m.rank = rank;
  m.address = address;
  m.last_seen = now;
  m.progressed = now;
  members_[id] = m;
  if (role == wire::Role::WORKER) ++generation_;
  return members_[id];
}

bool Membership::heard_from(const std::string& id, Clock::time_point now) {
  auto it = members_.find(id);
  if (it == members_.end() || !it->second.alive) return false;
  it->second.last_seen = now;
  return true;
}

std::vector<std::string> Membership::expire(Clock::time_point now) {
  std::vector<std::string> dead;
  for (auto& [id, m] : members_) {
    if (m.alive && !m.said_goodbye && now - m.last_seen > dead_after_) {
      m.alive = false;
      dead.push_back(id);
    }
  }
  if (!dead.empty()) ++generation_;
  return dead;
}

void Membership::set_clock(const std::string& id, std::uint64_t clock) {
  auto it = members_.find(id);
  if (it == members_.end()) return;
  if (clock != it->second.clock) it->second.progressed = Clock::now();
  it->second.clock = clock;
}

void Membership::progressed(const std::string& id, Clock::time_point now) {
  auto it = members_.find(id);
  if (it != members_.end()) it->second.progressed = now;
}

void Membership::mark_finished(const std::string& id) {
  auto it = members_.find(id);
  if (it != members_.end() && !it->second.finished) {
    it->second.finished = true;
    ++generation_;
  }
}

void Membership::mark_dead(const std::string& id) {
  auto it = members_.find(id);
  if (it != members_.end() && it->second.alive) {
    it->second.alive = false;
    ++generation_;
  }
}

const Member* Membership::registered_by(std::uint64_t nonce) const {
  auto it = nonces_.find(nonce);
  return it == nonces_.end() ? nullptr : find(it->second);
}

const Member* Membership::find(const std::string& id) const {
  auto it = members_.find(id);
  return it == members_.end() ? nullptr : &it->second;
}

std::vector<const Member*> Membership::members(wire::Role role, bool live_only) const {
  std::vector<const Member*> out;
  for (const auto& [id, m] : members_)
    if (m.role == role && (!live_only || m.alive)) out.push_back(&m);
  std::sort(out.begin(), out.end(), [](const Member* a, const Member* b) { return a->rank < b->rank; });
  return out;
}

std::vector<std::string> Membership::live_workers() const {
  std::vector<std::string> out;
  for (const auto* m : members(wire::Role::WORKER, true))
    if (!m->finished) out.push_back(m->id);
  return out;
}

}  // namespace shoal
