// The transport's fault injection (comm/fault_injection.h) on real ZeroMQ sockets over inproc://:
// a `hold` rule keeps what it matched until the test releases it, then delivers it in order, and
// applies to nothing after.
#include "comm/fault_injection.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "comm/transport.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;

void send_heartbeat(ClientSocket& client, const std::string& sender, std::uint64_t request) {
  Outgoing msg(sender, request);
  msg.body().initHeartbeat();
  client.send(msg, 1000ms);
}

TEST(FaultInjection, HeldMessagesWaitForTheirReleaseThenArriveInOrder) {
  FaultPlan faults;
  faults.add(FaultRule{wire::Envelope::Body::HEARTBEAT, FaultAction::hold, "worker.1", -1, {}});
  Network net(&faults);
  const Logger log("test", LogLevel::warn);
  ServerSocket server(net, "inproc://fault-injection-hold", log);
  ClientSocket client(net, server.endpoint(), log);
  send_heartbeat(client, "worker.1", 1);
  send_heartbeat(client, "worker.1", 2);
  send_heartbeat(client, "worker.0", 3);  // after both on the same connection: they were read first

  auto in = server.receive(20s);
  ASSERT_TRUE(in.has_value());
  EXPECT_EQ(in->sender(), "worker.0");
  EXPECT_EQ(faults.applied(0), 2);
  EXPECT_FALSE(server.try_receive().has_value()) << "a held message came before its release";
  EXPECT_FALSE(server.holds_due_message());

  faults.release(0);
  EXPECT_TRUE(server.holds_due_message());
  std::vector<std::uint64_t> requests;
  while (requests.size() < 2)
    if (auto held = server.receive(20s)) {
      EXPECT_EQ(held->sender(), "worker.1");
      requests.push_back(held->request_id());
    } else {
      FAIL() << "the released messages never came";
    }
  EXPECT_EQ(requests, (std::vector<std::uint64_t>{1, 2}));

  // A released rule is over: the next message passes untouched.
  send_heartbeat(client, "worker.1", 4);
  in = server.receive(20s);
  ASSERT_TRUE(in.has_value());
  EXPECT_EQ(in->request_id(), 4u);
  EXPECT_EQ(faults.applied(0), 2);
  EXPECT_EQ(server.counters().injected_faults, 2u);
}

}  // namespace
}  // namespace shoal
