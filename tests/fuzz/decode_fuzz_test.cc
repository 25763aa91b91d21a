// The decoder fuzz target run over generated inputs in every test run: random frames, and
// valid messages of every kind with bytes flipped, truncated or extended. None may crash or
// throw anything but a rejection; unchanged valid messages must be accepted.
#include <gtest/gtest.h>

#include "comm/partition.h"
#include "compute/rng.h"
#include "comm/wire/codec.h"
#include "tests/fuzz/decode_one.h"

namespace shoal {
namespace {

std::string encode(std::vector<zmq::message_t> frames) {
  std::string out(1, static_cast<char>(frames.size() - 1));
  for (auto& f : frames) {
    out += static_cast<char>(f.size() & 0xff);
    out += static_cast<char>(f.size() >> 8);
    out.append(static_cast<const char*>(f.data()), f.size());
  }
  return out;
}

std::vector<std::string> valid_messages() {
  std::vector<std::string> out;
  {
    Outgoing m("worker.0", 1);
    auto p = m.body().initPush();
    p.setClock(3);
    auto l = p.initChunks(2);
    l[0].setKey(0);
    l[0].setNumel(4);
    l[1].setKey(1);
    l[1].setNumel(2);
    m.add_payload(zmq::message_t(16));
    m.add_payload(zmq::message_t(8));
    out.push_back(encode(m.frames()));
  }
  {
    Outgoing m("coordinator", 2);
    PartitionTable t;
    t.total_elements = 10;
    t.chunks = {{0, 6}, {6, 4}};
    t.servers = {{"ps.0", "tcp://h:1", 0, 1}, {"ps.1", "tcp://h:2", 1, 2}};
    t.live_workers = {"worker.0"};
    t.to_wire(m.body().initPartitionTable());
    out.push_back(encode(m.frames()));
  }
  {
    Outgoing m("ps.0", 3);
    auto e = m.body().initError();
    e.setCode(wire::ErrorCode::TIMEOUT);
    e.setMessage("late");
    out.push_back(encode(m.frames()));
  }
  {
    Outgoing m("coordinator", 4);
    auto s = m.body().initLeaseGrant().initShard();
    s.setEpoch(1);
    s.setEnd(64);
    out.push_back(encode(m.frames()));
  }
  {
    Outgoing m("worker.1", 5);
    auto r = m.body().initRegister();
    r.setRole(wire::Role::SERVER);
    r.setAddress("tcp://127.0.0.1:5000");
    out.push_back(encode(m.frames()));
  }
  return out;
}

DecodeOutcome decode(const std::string& input) {
  return decode_one(reinterpret_cast<const std::uint8_t*>(input.data()), input.size());
}

TEST(DecoderFuzz, ValidMessagesAreAccepted) {
  for (const auto& m : valid_messages()) EXPECT_EQ(decode(m), DecodeOutcome::accepted);
}

TEST(DecoderFuzz, EnvelopeCutShortOfAWholeWordIsAlwaysRejected) {
  for (const auto& m : valid_messages()) {
    // Frame 0's length field is bytes 1-2; shrink it by 1..7 bytes (never a whole word).
    std::size_t len = static_cast<unsigned char>(m[1]) | (std::size_t{static_cast<unsigned char>(m[2])} << 8);
    for (std::size_t cut = 1; cut < 8 && cut < len; ++cut) {
      std::string shorter = m;
      shorter[1] = static_cast<char>((len - cut) & 0xff);
      shorter[2] = static_cast<char>((len - cut) >> 8);
      EXPECT_EQ(decode(shorter), DecodeOutcome::rejected) << "cut " << cut;
    }
  }
}

TEST(DecoderFuzz, RandomAndMutatedInputsAreRejectedNotCrashed) {
  Rng rng(2024);
  auto seeds = valid_messages();
  int accepted = 0, rejected = 0, broken = 0;
  for (int i = 0; i < 30000; ++i) {
    std::string input;
    if (i % 3 == 0) {
      input.resize(rng.below(300));
      for (auto& c : input) c = static_cast<char>(rng.below(256));
    } else {
      input = seeds[rng.below(seeds.size())];
      int edits = 1 + static_cast<int>(rng.below(4));
      for (int e = 0; e < edits; ++e) {
        switch (rng.below(4)) {
          case 0:
            input[rng.below(input.size())] ^= static_cast<char>(1 << rng.below(8));
            break;
          case 1:
            input[rng.below(input.size())] = static_cast<char>(rng.below(256));
            break;
          case 2:
            input.resize(rng.below(input.size() + 1));
            break;
          default:
            input += static_cast<char>(rng.below(256));
            break;
        }
        if (input.empty()) input = "x";
      }
    }
    switch (decode(input)) {
      case DecodeOutcome::accepted:
        ++accepted;
        break;
      case DecodeOutcome::rejected:
        ++rejected;
        break;
      case DecodeOutcome::broken:
        ++broken;
        ADD_FAILURE() << "accepted a message that breaks a decoder promise, input " << i;
        break;
    }
  }
  EXPECT_EQ(broken, 0);
  // Both sides are exercised: random bytes are rejected, while mutations that keep a message
  // well formed (a flipped payload byte, an edited numeric field) still decode.
  EXPECT_GT(rejected, 10000);
  EXPECT_GT(accepted, 1000);
}

}  // namespace
}  // namespace shoal
