// Fault injection at the transport, for tests: a FaultPlan lists rules ("drop the first push
// ack from ps.0", "delay worker.1's heartbeats by 3 s", "deliver every register twice",
// "swap the next two pull replies") and every socket made from a Network that carries the plan
// applies them to the messages it receives. Production code never makes a plan: a Network
// without one costs a null-pointer test per received message.
//
// Faults are applied on the receiving side, in the receiving thread, so a delayed or reordered
// message never touches a socket from another thread (ZeroMQ sockets are single-threaded).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "comm/wire/shoal.capnp.h"

namespace shoal {

enum class FaultAction {
  drop,       // the message is lost
  delay,      // delivered `delay` later (messages behind it are not held back)
  duplicate,  // delivered twice
  reorder,    // held back until the next message on the same socket has been delivered (or
              // `delay`, 100 ms if zero, when no other message comes)
  hold,       // held back until the test releases the rule (FaultPlan::release): a gate that a
              // test opens on an event it observed, not after a guessed time
};

struct FaultRule {
  wire::Envelope::Body::Which kind = wire::Envelope::Body::PUSH;
  FaultAction action = FaultAction::drop;
  std::string sender;  // the sender id must start with this ("" matches every sender)
  int count = 1;       // how many matching messages the rule applies to; -1: every one
  std::chrono::milliseconds delay{0};
};

// Thread-safe: the sockets of every role in a test process consult the same plan.
class FaultPlan {
 public:
  void add(FaultRule rule);
  struct Match {
    std::size_t index;  // of the rule, in the order added
    FaultRule rule;
  };
  // The rule that applies to this message (and counts it), if any.
  std::optional<Match> match(wire::Envelope::Body::Which kind, const std::string& sender);
  // How many messages a rule (by its index in the order added) was applied to.
  int applied(std::size_t rule) const;
  // Ends a rule: it applies to no further message, and the messages it holds become due.
  void release(std::size_t rule);
  bool released(std::size_t rule) const;

 private:
  struct Entry {
    FaultRule rule;
    int applied = 0;
    bool released = false;
  };
  mutable std::mutex mutex_;
  std::vector<Entry> rules_;
};

}  // namespace shoal
