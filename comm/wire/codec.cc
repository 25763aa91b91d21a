#include "comm/wire/codec.h"

#include <capnp/serialize.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cstring>

#include "base/error.h"

namespace shoal {
namespace {

// ZeroMQ calls this (from whichever thread releases the frame) once it is done with the bytes.
void release_owner(void* /*data*/, void* hint) { delete static_cast<std::shared_ptr<const void>*>(hint); }

bool is_printable(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c > 0x7e) return false;
  return true;
}

}  // namespace

const char* kind_name(wire::Envelope::Body::Which kind) {
  using K = wire::Envelope::Body::Which;
  switch (kind) {
    case K::REGISTER:
      return "register";
    case K::REGISTER_REPLY:
      return "registerReply";
    case K::HEARTBEAT:
      return "heartbeat";
    case K::HEARTBEAT_REPLY:
      return "heartbeatReply";
    case K::TABLE_REQUEST:
      return "tableRequest";
    case K::PARTITION_TABLE:
      return "partitionTable";
    case K::LEASE_REQUEST:
      return "leaseRequest";
    case K::LEASE_GRANT:
      return "leaseGrant";
    case K::LEASE_DONE:
      return "leaseDone";
    case K::EVAL_DONE:
      return "evalDone";
    case K::PUSH:
      return "push";
    case K::PUSH_ACK:
      return "pushAck";
    case K::PULL:
      return "pull";
    case K::PULL_REPLY:
      return "pullReply";
    case K::ERROR:
      return "error";
    case K::SHUTDOWN:
      return "shutdown";
    case K::ACK:
      return "ack";
    case K::LEAVE:
      return "leave";
    case K::STORE_SET:
      return "storeSet";
    case K::STORE_GET:
      return "storeGet";
    case K::STORE_VALUE:
      return "storeValue";
    case K::SNAPSHOT:
      return "snapshot";
    case K::CHECKPOINT_FILES:
      return "checkpointFiles";
    case K::PREEMPT:
      return "preempt";
    case K::PREEMPT_REPLY:
      return "preemptReply";
    case K::SYNC_CUT:
      return "syncCut";
  }
  return "unknown";
}

Incoming Incoming::decode(std::string peer, std::vector<zmq::message_t> frames) {
  SHOAL_REQUIRE(!frames.empty(), ProtocolError, "empty message");
  SHOAL_REQUIRE(frames.size() <= kMaxFrames, ProtocolError, "too many frames (" << frames.size() << ")");
  const zmq::message_t& head = frames[0];
  SHOAL_REQUIRE(head.size() >= sizeof(capnp::word) && head.size() % sizeof(capnp::word) == 0, ProtocolError,
                "envelope of " << head.size() << " bytes is not a whole number of 8-byte words");
  SHOAL_REQUIRE(head.size() / sizeof(capnp::word) <= kTraversalLimitWords, ProtocolError,
                "envelope of " << head.size() << " bytes exceeds the limit");

  Incoming in;
  in.peer = std::move(peer);
  // Cap'n Proto reads words in place, so the envelope is copied to aligned memory (it is small:
  // tensor bytes travel in the other frames).
  in.words_ = kj::heapArray<capnp::word>(head.size() / sizeof(capnp::word));
  std::memcpy(in.words_.begin(), head.data(), head.size());
  try {
    capnp::ReaderOptions options;
    options.traversalLimitInWords = kTraversalLimitWords;
    options.nestingLimit = kNestingLimit;
    in.reader_ = std::make_unique<capnp::FlatArrayMessageReader>(in.words_.asPtr(), options);
    in.root_ = in.reader_->getRoot<wire::Envelope>();
    in.root_.totalSize();  // walks every pointer once: bounds and limits are checked here, not later
    SHOAL_REQUIRE(in.root_.getVersion() == wire::PROTOCOL_VERSION, ProtocolError,
                  "protocol version " << in.root_.getVersion() << ", expected " << wire::PROTOCOL_VERSION);
    SHOAL_REQUIRE(in.root_.hasSender(), ProtocolError, "no sender");
    in.sender_ = in.root_.getSender().cStr();
    SHOAL_REQUIRE(!in.sender_.empty() && in.sender_.size() <= kMaxSenderLength && is_printable(in.sender_),
                  ProtocolError, "malformed sender id");
    auto body = in.root_.getBody();
    auto kind = body.which();
    SHOAL_REQUIRE(static_cast<unsigned>(kind) <= static_cast<unsigned>(wire::Envelope::Body::SYNC_CUT), ProtocolError,
                  "unknown message kind " << static_cast<unsigned>(kind));
    // The rendezvous store (sync jobs): bounded, printable keys and small values.
    auto check_key = [](capnp::Text::Reader key) {
      std::string k = key.cStr();
      SHOAL_REQUIRE(!k.empty() && k.size() <= kMaxStoreKeyLength && is_printable(k), ProtocolError,
                    "malformed store key (empty, over " << kMaxStoreKeyLength << " bytes or not printable)");
    };
    auto check_value = [](capnp::Data::Reader value) {
      SHOAL_REQUIRE(value.size() <= kMaxStoreValueBytes, ProtocolError,
                    "store value of " << value.size() << " bytes, over the limit of " << kMaxStoreValueBytes);
    };
    if (kind == wire::Envelope::Body::STORE_SET) {
      check_key(body.getStoreSet().getKey());
      check_value(body.getStoreSet().getValue());
    } else if (kind == wire::Envelope::Body::STORE_GET) {
      check_key(body.getStoreGet());
    } else if (kind == wire::Envelope::Body::STORE_VALUE) {
      check_value(body.getStoreValue());
    }
    capnp::List<wire::ChunkData>::Reader chunks;
    bool has_payload = false;
    if (kind == wire::Envelope::Body::PUSH) {
      chunks = body.getPush().getChunks();
      has_payload = true;
    } else if (kind == wire::Envelope::Body::PULL_REPLY) {
      chunks = body.getPullReply().getChunks();
      has_payload = true;
    }
    std::size_t expected = 1 + (has_payload ? chunks.size() : 0);
    SHOAL_REQUIRE(frames.size() == expected, ProtocolError,
                  kind_name(kind) << " with " << frames.size() << " frames, expected " << expected);
    for (std::size_t i = 0; has_payload && i < chunks.size(); ++i) {
      std::size_t want = static_cast<std::size_t>(chunks[i].getNumel()) * sizeof(float);
      SHOAL_REQUIRE(chunks[i].getNumel() > 0, ProtocolError, kind_name(kind) << " chunk " << i << " is empty");
      SHOAL_REQUIRE(frames[i + 1].size() == want, ProtocolError,
                    kind_name(kind) << " chunk key " << chunks[i].getKey() << " declares " << chunks[i].getNumel()
                                    << " floats (" << want << " bytes) but its frame has " << frames[i + 1].size()
                                    << " bytes");
    }
  } catch (const kj::Exception& e) {
    SHOAL_THROW(ProtocolError, "malformed envelope: " << e.getDescription().cStr());
  }
  for (std::size_t i = 1; i < frames.size(); ++i) in.payloads_.push_back(std::move(frames[i]));
  return in;
}

Outgoing::Outgoing(const std::string& sender, std::uint64_t request_id)
    // Envelopes are small: a 1 KiB first segment (not capnp's 8 KiB, zeroed per message);
    // a partition table grows it.
    : builder_(std::make_unique<capnp::MallocMessageBuilder>(128)), root_(builder_->initRoot<wire::Envelope>()) {
  root_.setVersion(wire::PROTOCOL_VERSION);
  root_.setSender(sender);
  root_.setRequestId(request_id);
}

void Outgoing::add_borrowed_payload(const void* data, std::size_t bytes, std::shared_ptr<const void> owner) {
  auto* hint = new std::shared_ptr<const void>(std::move(owner));
  payloads_.emplace_back(const_cast<void*>(data), bytes, release_owner, hint);
}

void Outgoing::add_payload(zmq::message_t frame) { payloads_.push_back(std::move(frame)); }

std::vector<zmq::message_t> Outgoing::frames() {
  std::vector<zmq::message_t> out;
  out.reserve(payloads_.size() + 1);
  // Serialized straight into the frame: one allocation, no intermediate array.
  zmq::message_t header(capnp::computeSerializedSizeInWords(*builder_) * sizeof(capnp::word));
  kj::ArrayOutputStream stream(kj::arrayPtr(static_cast<kj::byte*>(header.data()), header.size()));
  capnp::writeMessage(stream, *builder_);
  out.push_back(std::move(header));
  for (auto& p : payloads_) out.push_back(std::move(p));
  payloads_.clear();
  return out;
}

}  // namespace shoal
