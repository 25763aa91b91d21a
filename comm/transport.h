// The transport seam: ZeroMQ sockets that speak Shoal messages over tcp://, ipc:// or
// inproc:// alike, so every protocol runs inside one test process and unchanged over TCP.
// A ServerSocket (ROUTER) serves many peers; a ClientSocket (DEALER) talks to one server.
// Every receive has a deadline, and every received message is decoded and checked
// (comm/wire/codec.h): a bad one is dropped, counted by reason and logged — never thrown at
// the caller. A signal (EINTR) never interrupts a send or a receive half-way: the call is
// repeated. A Network is what sockets are made from: the ZeroMQ context and, in tests only, a
// FaultPlan (comm/fault_injection.h) that every socket applies to what it receives.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "comm/auth.h"
#include "comm/fault_injection.h"
#include "base/log.h"
#include "comm/wire/codec.h"

namespace shoal {

class Counter;
class ZapHandler;
struct Telemetry;

// The sockets of one process (or of one test that runs several roles as threads over
// inproc://, which needs them all on one context).
class Network {
 public:
  // `faults`: tests only; the plan must outlive every socket made from this network.
  explicit Network(FaultPlan* faults = nullptr);
  ~Network();  // stops the ZAP handler; every socket made from it must be gone
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;
  zmq::context_t& context() { return context_; }
  FaultPlan* faults() const { return faults_; }

  // auth.keys: every socket made from now on speaks CURVE with these keys. Listening sockets
  // accept only the job's members (a ZAP handler thread checks each connection's key), and a
  // message whose sender is not the member its key proves is dropped. `refused` (optional)
  // counts the connections refused; so does refused_connections().
  void use_curve(JobKeys keys, Logger log, Counter* refused = nullptr);
  const JobKeys* curve() const { return keys_.get(); }
  // Handshakes listening sockets refused (no CURVE, or a key that is not a member's).
  std::uint64_t refused_connections() const { return refused_.load(); }
  void count_refused();

 private:
  std::atomic<std::uint64_t> refused_{0};
  Counter* refused_metric_ = nullptr;
  zmq::context_t context_;
  FaultPlan* faults_;
  std::unique_ptr<const JobKeys> keys_;
  std::unique_ptr<ZapHandler> zap_;  // after context_: stopped before the context closes
};

// auth.keys: loads `member`'s keys from `dir` and turns CURVE on for `network`; the refused
// connections are counted in `telemetry` (optional) as shoal_auth_refused_connections_total.
void use_job_keys(Network& network, const std::string& dir, const std::string& member, const Logger& log,
                  Telemetry* telemetry);

struct ProtocolCounters {
  std::uint64_t received = 0;                    // valid messages
  std::map<std::string, std::uint64_t> dropped;  // reason -> count
  std::uint64_t injected_faults = 0;             // tests: messages a FaultPlan dropped, delayed, ...
  std::uint64_t total_dropped() const;
};

class Socket {
 public:
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  virtual ~Socket();

  // The next valid message, or nothing once `timeout` has passed.
  std::optional<Incoming> receive(std::chrono::milliseconds timeout);
  // A message already waiting, or nothing (never blocks).
  std::optional<Incoming> try_receive();
  // Tests: a message held back by a fault rule is due; poll() on raw() does not see those.
  bool holds_due_message() const;

  // Counts (and logs, rate-limited) a message a role rejected after decoding.
  void reject(const std::string& reason, const std::string& detail);
  const ProtocolCounters& counters() const { return counters_; }
  zmq::socket_t& raw() { return socket_; }

 protected:
  Socket(Network& network, zmq::socket_type type, Logger log);
  // Sends the frames as one message (a signal never splits it); TimeoutError if it cannot
  // start within `timeout` (the peer's queue is full, or an inproc:// peer is gone).
  // `waiting`, when set, runs at least every 100 ms while the first frame finds no room (it may
  // throw to end the wait: nothing was sent then).
  void send_frames(std::vector<zmq::message_t>& frames, std::chrono::milliseconds timeout,
                   const std::function<void()>& waiting = {});
  bool has_routing_frame_ = false;
  zmq::socket_t socket_;
  Logger log_;
  ProtocolCounters counters_;

 private:
  struct Held {
    std::chrono::steady_clock::time_point due;
    bool until_next = false;  // reorder: due once a later message has been delivered
    Incoming message;
    std::optional<std::size_t> hold;  // due once the plan releases this rule (hold)
  };
  // The frames of the next message, or false when none is waiting.
  // `user`: the member the connection's key proves (CURVE on a listening socket), else "".
  bool read_frames(std::string& peer, std::string& user, std::vector<zmq::message_t>& frames, bool& too_many);
  std::optional<Incoming> decode_checked(std::string peer, std::vector<zmq::message_t> frames, const std::string& user);
  std::optional<Incoming> apply_faults(std::string peer, std::vector<zmq::message_t> frames, const std::string& user);
  std::optional<Incoming> take_due_held();
  bool held_is_due(const Held& h, std::chrono::steady_clock::time_point now) const;

  // CURVE on a listening socket: counts and logs the handshakes it refused (from a monitor).
  void drain_handshake_events();

  FaultPlan* faults_;
  Network* network_;
  bool authenticated_ = false;  // CURVE: every message carries its connection's user id
  std::unique_ptr<zmq::socket_t> monitor_;
  std::deque<Held> held_;
};

// No send waits longer than this for room in a peer's queue, unless told otherwise.
constexpr std::chrono::milliseconds kSendTimeout{60000};

class ServerSocket final : public Socket {
 public:
  // Binds; "tcp://127.0.0.1:0" picks a free port, see endpoint().
  ServerSocket(Network& network, const std::string& address, Logger log);
  const std::string& endpoint() const { return endpoint_; }
  void send(const std::string& peer, Outgoing& message);

 private:
  std::string endpoint_;
};

class ClientSocket final : public Socket {
 public:
  ClientSocket(Network& network, const std::string& address, Logger log);
  const std::string& address() const { return address_; }
  // Waits at most `timeout` to hand the message to ZeroMQ (0: only if that is possible at once).
  void send(Outgoing& message, std::chrono::milliseconds timeout = kSendTimeout,
            const std::function<void()>& waiting = {});

 private:
  std::string address_;
};

// zmq::poll that returns (with no events) when a signal interrupts it, instead of throwing.
void poll_interruptible(zmq::pollitem_t* items, std::size_t count, std::chrono::milliseconds timeout);

// "tcp://0.0.0.0:0" -> "tcp://0.0.0.0:*", which ZeroMQ reads as "any free port".
std::string zmq_bind_address(const std::string& address);

}  // namespace shoal
