// The transport seam: ZeroMQ sockets that speak Shoal messages over tcp://, ipc:// or
// inproc:// alike, so every protocol runs inside one test process and unchanged over TCP.
// A ServerSocket (ROUTER) serves many peers; a ClientSocket (DEALER) talks to one server.
// Every receive has a deadline, and every received message is decoded and checked
// (core/wire/codec.h): a bad one is dropped, counted by reason and logged — never thrown at
// the caller.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "core/log.h"
#include "core/wire/codec.h"

namespace shoal {

struct ProtocolCounters {
  std::uint64_t received = 0;                    // valid messages
  std::map<std::string, std::uint64_t> dropped;  // reason -> count
  std::uint64_t total_dropped() const;
};

class Socket {
 public:
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  virtual ~Socket() = default;

  // The next valid message, or nothing once `timeout` has passed.
  std::optional<Incoming> receive(std::chrono::milliseconds timeout);
  // A message already waiting, or nothing (never blocks).
  std::optional<Incoming> try_receive();

  // Counts (and logs, rate-limited) a message a role rejected after decoding.
  void reject(const std::string& reason, const std::string& detail);
  const ProtocolCounters& counters() const { return counters_; }
  zmq::socket_t& raw() { return socket_; }

 protected:
  Socket(zmq::context_t& context, zmq::socket_type type, Logger log);
  bool has_routing_frame_ = false;
  zmq::socket_t socket_;
  Logger log_;
  ProtocolCounters counters_;
};

class ServerSocket final : public Socket {
 public:
  // Binds; "tcp://127.0.0.1:0" picks a free port, see endpoint().
  ServerSocket(zmq::context_t& context, const std::string& address, Logger log);
  const std::string& endpoint() const { return endpoint_; }
  void send(const std::string& peer, Outgoing& message);

 private:
  std::string endpoint_;
};

class ClientSocket final : public Socket {
 public:
  ClientSocket(zmq::context_t& context, const std::string& address, Logger log);
  const std::string& address() const { return address_; }
  void send(Outgoing& message);

 private:
  std::string address_;
};

// zmq::poll that returns (with no events) when a signal interrupts it, instead of throwing.
void poll_interruptible(zmq::pollitem_t* items, std::size_t count, std::chrono::milliseconds timeout);

// "tcp://0.0.0.0:0" -> "tcp://0.0.0.0:*", which ZeroMQ reads as "any free port".
std::string zmq_bind_address(const std::string& address);

}  // namespace shoal
