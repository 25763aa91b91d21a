// Who is in the job: registration, heartbeats and liveness. Every change of the set of live
// workers (a death, a worker finishing) starts a new generation that heartbeat replies carry.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "comm/wire/shoal.capnp.h"

namespace shoal {

using Clock = std::chrono::steady_clock;

// Durations in the configuration are seconds (double); the coordinator's clock counts in its own
// units.
inline Clock::duration seconds_to_duration(double seconds) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
}
inline double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Member {
  std::string id;  // "ps.0", "worker.2"
  wire::Role role = wire::Role::WORKER;
  int rank = 0;
  std::string address;
  Clock::time_point last_seen;
  bool alive = true;
  bool finished = false;  // workers: told the job is over
  bool said_goodbye = false;
  std::uint64_t clock = 0;       // workers: steps pushed, as the last heartbeat said
  Clock::time_point progressed;  // when its clock last moved (or it registered)
};

class Membership {
 public:
  explicit Membership(Clock::duration dead_after) : dead_after_(dead_after) {}

  // Registers a process (rank -1: the lowest free rank of its role). Re-registering a live id
  // is refused; a dead one may come back as a new member. Throws ProtocolError.
  const Member& add(wire::Role role, int rank, const std::string& address, Clock::time_point now);
  // Records a heartbeat; false for unknown or dead ids.
  bool heard_from(const std::string& id, Clock::time_point now);
  // Declares members silent for longer than dead_after dead; returns their ids.
  std::vector<std::string> expire(Clock::time_point now);
  void set_clock(const std::string& id, std::uint64_t clock);
  void progressed(const std::string& id, Clock::time_point now);  // a finished shard, an evaluation
  void mark_finished(const std::string& id);
  void mark_dead(const std::string& id);

  // Retries of one process's registration carry its nonce: each copy gets the same answer.
  void remember(std::uint64_t nonce, const std::string& id) { nonces_[nonce] = id; }
  const Member* registered_by(std::uint64_t nonce) const;

  const Member* find(const std::string& id) const;
  std::vector<const Member*> members(wire::Role role, bool live_only) const;
  std::vector<std::string> live_workers() const;  // alive and not finished, sorted
  std::size_t count(wire::Role role, bool live_only) const { return members(role, live_only).size(); }
  std::uint64_t generation() const { return generation_; }

 private:
  Clock::duration dead_after_;
  std::map<std::string, Member> members_;
  std::map<std::uint64_t, std::string> nonces_;  // register nonce -> member id
  std::uint64_t generation_ = 1;
};

const char* role_name(wire::Role role);

}  // namespace shoal
