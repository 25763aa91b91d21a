#include "tests/fuzz/decode_one.h"

#include <kj/exception.h>

#include <vector>

#include "base/error.h"
#include "comm/partition.h"
#include "comm/wire/codec.h"

namespace shoal {

DecodeOutcome decode_one(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return DecodeOutcome::rejected;
  std::size_t frames = 1 + data[0] % 8, pos = 1;
  std::vector<zmq::message_t> parts;
  for (std::size_t f = 0; f < frames; ++f) {
    std::size_t len = 0;
    if (pos + 2 <= size) len = data[pos] | (std::size_t{data[pos + 1]} << 8);
    pos = std::min(size, pos + 2);
    len = std::min(len, size - pos);
    parts.emplace_back(data + pos, len);
    pos += len;
  }
  try {
    Incoming in = Incoming::decode("peer", std::move(parts));
    auto body = in.envelope().getBody();
    using K = wire::Envelope::Body;
    // What decode() promises every role.
    const std::string sender = in.sender();
    if (sender.empty() || sender.size() > kMaxSenderLength) return DecodeOutcome::broken;
    for (unsigned char c : sender)
      if (c < 0x20 || c > 0x7e) return DecodeOutcome::broken;
    if (in.envelope().getVersion() != wire::PROTOCOL_VERSION) return DecodeOutcome::broken;
    auto payloads_match = [&](capnp::List<wire::ChunkData>::Reader chunks) {
      if (in.payloads().size() != chunks.size()) return false;
      for (unsigned i = 0; i < chunks.size(); ++i)
        if (chunks[i].getNumel() == 0 || in.payloads()[i].size() != std::size_t{chunks[i].getNumel()} * sizeof(float))
          return false;
      return true;
    };
    std::size_t touched = sender.size();
    switch (in.kind()) {
      case K::PUSH:
        if (!payloads_match(body.getPush().getChunks())) return DecodeOutcome::broken;
        break;
      case K::PULL_REPLY:
        if (!payloads_match(body.getPullReply().getChunks())) return DecodeOutcome::broken;
        break;
      case K::PARTITION_TABLE:
        touched += PartitionTable::from_wire(body.getPartitionTable()).chunks.size();
        break;
      case K::REGISTER:
        touched += body.getRegister().getAddress().size();
        break;
      case K::HEARTBEAT_REPLY:
        for (auto w : body.getHeartbeatReply().getLiveWorkers()) touched += w.size();
        break;
      case K::LEASE_GRANT:
        touched += static_cast<std::size_t>(body.getLeaseGrant().which());
        break;
      case K::ERROR:
        touched += body.getError().getMessage().size();
        break;
      default:
        if (!in.payloads().empty()) return DecodeOutcome::broken;
        break;
    }
    (void)touched;  // read every field a role reads; the value itself does not matter
    return DecodeOutcome::accepted;
  } catch (const ProtocolError&) {
    return DecodeOutcome::rejected;
  } catch (const kj::Exception&) {
    // A field the up-front walk did not reach (e.g. text without its NUL): the roles catch
    // this too and drop the message.
    return DecodeOutcome::rejected;
  }
}

}  // namespace shoal
