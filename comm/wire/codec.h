// Encoding and checked decoding of Shoal messages: a Cap'n Proto Envelope in the first
// ZeroMQ frame and one raw float32 frame per chunk after it. decode() validates everything a
// receiver can check without knowing the job (version, traversal limits, the shape of the
// body, frame count and sizes against the declared chunks) and throws ProtocolError with a
// short reason; the roles then check what only they know (sender, keys, clocks).
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "comm/wire/shoal.capnp.h"

namespace shoal {

constexpr std::size_t kMaxFrames = 1 + 65536;
constexpr std::uint64_t kTraversalLimitWords = 1u << 21;  // 16 MiB of envelope
constexpr int kNestingLimit = 16;
constexpr std::size_t kMaxSenderLength = 128;
constexpr std::size_t kMaxStoreKeyLength = 256;
constexpr std::size_t kMaxStoreValueBytes = 64 * 1024;

// A received, validated message.
class Incoming {
 public:
  std::string peer;  // ROUTER routing id of the connection it came from (server sockets)
  std::string user;  // with auth.keys: the member the connection's key proves (server sockets)
  wire::Envelope::Reader envelope() const { return root_; }
  wire::Envelope::Body::Which kind() const { return root_.getBody().which(); }
  std::string sender() const { return sender_; }
  std::uint64_t request_id() const { return root_.getRequestId(); }
  // Payload frames, one per ChunkData of a push or pull reply, in order.
  std::vector<zmq::message_t>& payloads() { return payloads_; }

  // Decodes frames (envelope first); throws ProtocolError naming what is wrong.
  static Incoming decode(std::string peer, std::vector<zmq::message_t> frames);

 private:
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  wire::Envelope::Reader root_;
  std::string sender_;
  std::vector<zmq::message_t> payloads_;
};

// A message being built: fill envelope().getBody(), add payload frames, then frames().
class Outgoing {
 public:
  Outgoing(const std::string& sender, std::uint64_t request_id);
  wire::Envelope::Builder envelope() { return root_; }
  wire::Envelope::Body::Builder body() { return root_.initBody(); }
  // A frame that points at memory the caller keeps unchanged until the peer has acknowledged
  // receiving it (zero-copy). `owner` keeps the memory allocated until ZeroMQ releases the
  // frame, which may be after the sender gave up waiting (an error, a stop): freeing it
  // earlier would let ZeroMQ's I/O thread read freed memory.
  void add_borrowed_payload(const void* data, std::size_t bytes, std::shared_ptr<const void> owner);
  void add_payload(zmq::message_t frame);
  std::vector<zmq::message_t> frames();

 private:
  std::unique_ptr<capnp::MallocMessageBuilder> builder_;
  wire::Envelope::Builder root_;
  std::vector<zmq::message_t> payloads_;
};

const char* kind_name(wire::Envelope::Body::Which kind);

}  // namespace shoal
