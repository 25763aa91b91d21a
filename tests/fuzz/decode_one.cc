#include "tests/fuzz/decode_one.h"

#include <kj/exception.h>

#include <vector>

#include "core/error.h"
#include "core/partition.h"
#include "core/wire/codec.h"

namespace shoal {

int decode_one(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
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
    std::size_t touched = in.sender().size();
    switch (in.kind()) {
      case K::PUSH:
        for (auto c : body.getPush().getChunks()) touched += c.getKey() + c.getNumel();
        for (auto& p : in.payloads()) touched += p.size();
        break;
      case K::PULL_REPLY:
        for (auto c : body.getPullReply().getChunks()) touched += c.getKey();
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
        break;
    }
    return touched > 0 ? 1 : 1;
  } catch (const ProtocolError&) {
    return 0;
  } catch (const kj::Exception&) {
    // A field the up-front walk did not reach (e.g. text without its NUL): the roles catch
    // this too and drop the message.
    return 0;
  }
}

}  // namespace shoal
