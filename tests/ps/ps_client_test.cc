// The parameter servers' client alone (ps/client), against real ParameterServers running as
// threads of this process over loopback TCP (ps/farm): pushed gradients come back applied in the
// replies, a server no push asked is pulled when the clock moves, the in-flight window holds
// pushes back until replies come, and a pull from a server that is gone ends at the deadline
// with an error naming it.
#include "ps/client/ps_client.h"

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "ps/farm/server_farm.h"

namespace shoal {
namespace {

constexpr float kInitial = 0.25f;
constexpr float kRate = 0.1f;

// Plain SGD at a fixed rate: a pushed gradient g turns a value v into v - kRate * g.
ServerOptions plain_sgd() {
  ServerOptions options;
  options.optimizer.kind = OptimizerKind::sgd;
  options.optimizer.momentum = 0;
  options.schedule.base_lr = kRate;
  return options;
}

// Every key of `server`, lowest first (how a worker's last push of a step holds them).
std::vector<std::uint32_t> keys_of(const PartitionTable& table, std::size_t server) {
  std::vector<std::uint32_t> keys;
  for (std::uint32_t k = table.servers[server].first_key; k < table.servers[server].end_key; ++k) keys.push_back(k);
  return keys;
}

// A worker's two buffers: gradients pushed from (shared, as a queued frame holds it) and the
// values pulled into.
struct Buffers {
  explicit Buffers(std::int64_t elements)
      : grads(std::make_shared<std::vector<float>>(static_cast<std::size_t>(elements))),
        values(static_cast<std::size_t>(elements), -1.f) {
    for (std::size_t i = 0; i < grads->size(); ++i) (*grads)[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
  }
  PushSource source() const { return PushSource{grads->data(), grads}; }
  PsClient::PullTarget target() {
    return [this] { return values.data(); };
  }
  std::shared_ptr<std::vector<float>> grads;
  std::vector<float> values;
};

PsClientOptions quick(double timeout_seconds) {
  PsClientOptions options;
  options.request_timeout = Seconds(timeout_seconds);
  return options;
}

TEST(PsClient, PushedGradientsComeBackAppliedAndAServerNoPushAskedIsPulled) {
  const std::int64_t elements = 1000;
  ServerFarm farm(2, elements, 100, kInitial, "test.worker", plain_sgd());
  Network network;
  Buffers b(elements);
  std::vector<std::uint64_t> clocks;
  PsClientOptions options = quick(30);
  options.on_clock = [&clocks](std::uint64_t clock) { clocks.push_back(clock); };
  PsClient client(network, farm.table(), "test.worker", Logger("worker", LogLevel::warn), options, b.target());
  ASSERT_EQ(client.servers(), 2u);

  client.await_parameters();
  for (float v : b.values) ASSERT_EQ(v, kInitial);

  // Clock 0: every chunk of both servers; the replies to the pushes are the next parameters.
  for (std::size_t s = 0; s < client.servers(); ++s) client.push(s, keys_of(farm.table(), s), b.source());
  client.advance_clock();
  client.await_parameters();
  for (std::size_t i = 0; i < b.values.size(); ++i)
    ASSERT_FLOAT_EQ(b.values[i], kInitial - kRate * (*b.grads)[i]) << "element " << i;

  // Clock 1: only server 0's chunks. Moving the clock pulls server 1, which keeps its values.
  const std::vector<float> before = b.values;
  std::fill(b.values.begin(), b.values.end(), -1.f);
  client.push(0, keys_of(farm.table(), 0), b.source());
  client.advance_clock();
  client.await_parameters();
  const ServerRange& second = farm.table().servers[1];
  const std::int64_t split = farm.table().chunks[second.first_key].offset;
  for (std::int64_t i = 0; i < elements; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (i < split)
      ASSERT_FLOAT_EQ(b.values[u], before[u] - kRate * (*b.grads)[u]) << "element " << i;
    else
      ASSERT_EQ(b.values[u], before[u]) << "element " << i;
  }
  EXPECT_EQ(client.clock(), 2u);
  EXPECT_EQ(clocks, (std::vector<std::uint64_t>{1, 2}));
}

TEST(PsClient, APushWaitsForRoomInTheInFlightWindow) {
  const std::int64_t elements = 50;
  ServerFarm farm(1, elements, 10, kInitial, "test.worker", plain_sgd());
  // Every reply of ps.0 is held at the client until the test opens the gate: no push is
  // answered meanwhile, so the window fills.
  FaultPlan faults;
  faults.add(
      FaultRule{.kind = wire::Envelope::Body::PULL_REPLY, .action = FaultAction::hold, .sender = "ps.0", .count = -1});
  Network network(&faults);
  Buffers b(elements);
  MetricsRegistry metrics;
  PsClientOptions options = quick(0.5);
  options.max_in_flight = 2;
  options.metrics = &metrics;
  PsClient client(network, farm.table(), "test.worker", Logger("worker", LogLevel::warn), options, b.target());
  Counter& pushed =
      metrics.counter("shoal_worker_push_bytes_total", "gradient bytes pushed, per server", {{"server", "ps.0"}});
  const double chunk_bytes = 10 * sizeof(float);

  // One message per call: two fit in the window, the third waits for a reply that never comes.
  client.push(0, {0}, b.source());
  client.push(0, {1}, b.source());
  EXPECT_EQ(pushed.value(), 2 * chunk_bytes);
  try {
    client.push(0, {2}, b.source());
    FAIL() << "a third push went out with two unanswered and a window of two";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("a push acknowledgement"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("replies to 2 pushes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(pushed.value(), 2 * chunk_bytes);

  // The replies arrive: the window opens and the rest of the step goes through.
  faults.release(0);
  for (std::uint32_t k = 2; k < farm.table().chunks.size(); ++k) client.push(0, {k}, b.source());
  client.advance_clock();
  client.await_parameters();
  EXPECT_EQ(pushed.value(), static_cast<double>(elements) * sizeof(float));
  for (std::size_t i = 0; i < b.values.size(); ++i)
    ASSERT_FLOAT_EQ(b.values[i], kInitial - kRate * (*b.grads)[i]) << "element " << i;
}

TEST(PsClient, APullFromAServerThatIsGoneEndsAtTheDeadlineNamingIt) {
  ServerFarm farm(2, 100, 10, kInitial, "test.worker", plain_sgd());
  // ps.1 of the table now lives where nothing listens (a port that was free a moment ago).
  PartitionTable table = farm.table();
  {
    zmq::context_t context;
    zmq::socket_t probe(context, zmq::socket_type::router);
    probe.set(zmq::sockopt::linger, 0);
    probe.bind("tcp://127.0.0.1:*");
    table.servers[1].address = probe.get(zmq::sockopt::last_endpoint);
  }
  Network network;
  Buffers b(100);
  const double timeout = 0.5;
  PsClient client(network, table, "test.worker", Logger("worker", LogLevel::warn), quick(timeout), b.target());

  const auto started = std::chrono::steady_clock::now();
  try {
    client.await_parameters();
    FAIL() << "the parameters arrived from a server that is gone";
  } catch (const TimeoutError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("no answer for the parameters"), std::string::npos) << what;
    EXPECT_NE(what.find("ps.1 (" + table.servers[1].address + "; the pull)"), std::string::npos) << what;
    EXPECT_EQ(what.find("ps.0"), std::string::npos) << "ps.0 answered: " << what;
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_GE(waited, timeout);
  EXPECT_LT(waited, timeout + 10) << "the deadline was not kept";
}

}  // namespace
}  // namespace shoal
