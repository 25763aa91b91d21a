// A real ParameterServer in this process over inproc://: bounded staleness, bulk-synchronous
// averaging, membership changes, and a table of malformed messages that must each be dropped
// or refused, counted, and leave the server serving.
#include "ps/parameter_server.h"
#include "compute/devices/devices.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include "coordinator/partitioner.h"
#include "base/error.h"
#include "compute/rng.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;

// The server runs in its own thread; the test talks to it only through sockets, or through
// `in_server` for the few things (membership, counters) that come from the coordinator.
class ServerFixture {
 public:
  ServerFixture(std::int64_t staleness, std::int64_t elements = 10,
                std::vector<std::string> workers = {"worker.0", "worker.1"},
                const std::function<void(ServerOptions&)>& tweak = {}) {
    address_ = "inproc://ps-test-" + std::to_string(++instances_);
    backend_ = make_backend(BackendOptions{Device::cpu(), 1});
    server_ = std::make_unique<ParameterServer>(context, address_, *backend_, Logger("ps", LogLevel::error));
    table = make_partition(elements, 3, {ServerRange{"ps.0", address_, 0, 0}});
    table.live_workers = std::move(workers);
    ServerOptions options;
    options.staleness = staleness;
    options.pull_timeout = 5s;
    options.optimizer.kind = OptimizerKind::sgd;
    options.optimizer.momentum = 0;
    options.schedule.base_lr = 0.1f;
    if (tweak) tweak(options);
    std::vector<float> initial(static_cast<std::size_t>(elements), 1.f);
    server_->start("ps.0", table, 0, initial.data(), options);
    thread_ = std::thread([this] {
      while (!stop_) {
        server_->serve(2ms);
        std::lock_guard<std::mutex> lock(mutex_);
        if (task_) {
          task_();
          task_ = nullptr;
        }
      }
    });
  }
  ~ServerFixture() {
    stop_ = true;
    thread_.join();
  }
  void in_server(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = std::move(fn);
    }
    while (true) {
      std::this_thread::sleep_for(1ms);
      std::lock_guard<std::mutex> lock(mutex_);
      if (!task_) return;
    }
  }
  ProtocolCounters counters() {
    ProtocolCounters c;
    in_server([&] { c = server_->counters(); });
    return c;
  }
  std::vector<float> values() {
    std::vector<float> v(static_cast<std::size_t>(table.total_elements));
    in_server([&] { server_->read_values(v.data()); });
    return v;
  }
  const std::string& address() const { return address_; }
  void set_live(std::vector<std::string> workers) {
    in_server([this, w = std::move(workers)] { server_->set_live_workers(w); });
  }

  Network context;
  PartitionTable table;

 private:
  static inline std::atomic<int> instances_{0};
  std::string address_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<ParameterServer> server_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::function<void()> task_;
};

class Client {
 public:
  Client(ServerFixture& f, std::string id)
      : f_(f), id_(std::move(id)), socket_(f.context, f.address(), Logger("c", LogLevel::off)) {}
  // Pushes `value` for every chunk.
  void push(std::uint64_t clock, float value) {
    Outgoing m(id_, next_++);
    auto p = m.body().initPush();
    p.setClock(clock);
    auto list = p.initChunks(static_cast<unsigned>(f_.table.chunks.size()));
    for (std::size_t k = 0; k < f_.table.chunks.size(); ++k) {
      list[static_cast<unsigned>(k)].setKey(static_cast<std::uint32_t>(k));
      list[static_cast<unsigned>(k)].setNumel(static_cast<std::uint32_t>(f_.table.chunks[k].numel));
      zmq::message_t frame(static_cast<std::size_t>(f_.table.chunks[k].numel) * 4);
      for (std::int64_t i = 0; i < f_.table.chunks[k].numel; ++i) static_cast<float*>(frame.data())[i] = value;
      m.add_payload(std::move(frame));
    }
    socket_.send(m);
  }
  void pull(std::uint64_t clock, bool bounded = true) {
    Outgoing m(id_, next_++);
    auto p = m.body().initPull();
    p.setClock(clock);
    p.setBounded(bounded);
    socket_.send(m);
  }
  void send(Outgoing& m) { socket_.send(m); }
  std::optional<Incoming> receive(std::chrono::milliseconds t = 2000ms) { return socket_.receive(t); }
  // Waits for a reply of this kind, skipping others (acks).
  std::optional<Incoming> expect(wire::Envelope::Body::Which kind, std::chrono::milliseconds t = 2000ms) {
    auto deadline = std::chrono::steady_clock::now() + t;
    while (std::chrono::steady_clock::now() < deadline) {
      auto in = socket_.receive(10ms);
      if (in && in->kind() == kind) return in;
    }
    return std::nullopt;
  }
  std::uint64_t next_ = 1;

 private:
  ServerFixture& f_;
  std::string id_;
  ClientSocket socket_;
};

float first_value(Incoming& reply) { return static_cast<const float*>(reply.payloads()[0].data())[0]; }

// What a server tells the coordinator workers should connect to: the bound endpoint, unless it
// binds every interface; then node.advertise, else the host's FQDN (a StatefulSet pod's name
// through its headless Service), with the bound port. Not a host name: a configuration error.
TEST(ParameterServer, AdvertisedAddressOfAServerBoundToEveryInterface) {
  const std::string fqdn = "shoal-ps-1.shoal-ps.default.svc.cluster.local";
  EXPECT_EQ(ParameterServer::advertised("tcp://127.0.0.1:6000", "", fqdn), "tcp://127.0.0.1:6000");
  EXPECT_EQ(ParameterServer::advertised("tcp://0.0.0.0:6000", "", fqdn), "tcp://" + fqdn + ":6000");
  EXPECT_EQ(ParameterServer::advertised("tcp://*:6000", "", fqdn), "tcp://" + fqdn + ":6000");
  EXPECT_EQ(ParameterServer::advertised("tcp://0.0.0.0:6000", "10.4.0.7", fqdn), "tcp://10.4.0.7:6000");
  EXPECT_EQ(ParameterServer::advertised("tcp://0.0.0.0:6000", "[fd00::7]", fqdn), "tcp://[fd00::7]:6000");
  for (const char* bad : {"tcp://x", "host:6000", "a b", "fd00::7", "[]"})
    EXPECT_THROW(ParameterServer::advertised("tcp://0.0.0.0:6000", bad, fqdn), ConfigError) << bad;
  EXPECT_THROW(ParameterServer::advertised("tcp://0.0.0.0:6000", "", ""), ConfigError) << "no host name at all";
}

TEST(ParameterServer, BoundedStalenessParksPullsOfWorkersTooFarAhead) {
  ServerFixture f(/*staleness=*/1);
  Client a(f, "worker.0"), b(f, "worker.1");
  a.push(0, 1.f);
  a.push(1, 1.f);
  ASSERT_TRUE(a.expect(wire::Envelope::Body::PUSH_ACK));
  ASSERT_TRUE(a.expect(wire::Envelope::Body::PUSH_ACK));
  a.pull(2);  // a has pushed 2 steps, b none: 2 ahead with staleness 1
  EXPECT_FALSE(a.expect(wire::Envelope::Body::PULL_REPLY, 300ms)) << "the pull must wait for the slowest worker";
  b.push(0, 1.f);
  auto reply = a.expect(wire::Envelope::Body::PULL_REPLY);
  ASSERT_TRUE(reply) << "b's push lets a go on";
  EXPECT_NEAR(first_value(*reply), 1.f - 3 * 0.1f, 1e-6) << "three pushes applied one by one";
  a.pull(2, /*bounded=*/false);
  EXPECT_TRUE(a.expect(wire::Envelope::Body::PULL_REPLY)) << "unbounded (evaluation) pulls never wait";
}

TEST(ParameterServer, StalenessZeroAveragesEachStepOnceEveryWorkerPushed) {
  ServerFixture f(/*staleness=*/0);
  Client a(f, "worker.0"), b(f, "worker.1");
  a.push(0, 1.f);
  a.pull(1);
  EXPECT_FALSE(a.expect(wire::Envelope::Body::PULL_REPLY, 300ms));
  EXPECT_EQ(f.values()[0], 1.f) << "nothing applied until every worker pushed step 0";
  b.push(0, 3.f);
  auto reply = a.expect(wire::Envelope::Body::PULL_REPLY);
  ASSERT_TRUE(reply);
  EXPECT_NEAR(first_value(*reply), 1.f - 0.1f * 2.f, 1e-6) << "the mean gradient (1 + 3) / 2, applied once";
  // A push for a step that is not the pending one is refused.
  a.push(5, 1.f);
  auto err = a.expect(wire::Envelope::Body::ERROR);
  ASSERT_TRUE(err);
  EXPECT_EQ(err->envelope().getBody().getError().getCode(), wire::ErrorCode::BAD_REQUEST);
}

TEST(ParameterServer, IdleAndDepartedWorkersDoNotHoldOthersBack) {
  ServerFixture f(/*staleness=*/0, 10, {"worker.0", "worker.1", "worker.2"});
  Client a(f, "worker.0"), b(f, "worker.1"), c(f, "worker.2");
  a.push(0, 2.f);
  // b had no data for step 0: an empty push moves its clock without a contribution.
  Outgoing idle("worker.1", 99);
  idle.body().initPush().setClock(0);
  b.send(idle);
  ASSERT_TRUE(b.expect(wire::Envelope::Body::PUSH_ACK));
  a.pull(1);
  EXPECT_FALSE(a.expect(wire::Envelope::Body::PULL_REPLY, 200ms)) << "still waiting for worker.2";
  f.set_live({"worker.0", "worker.1"});  // worker.2 died: the coordinator's heartbeat says so
  auto reply = a.expect(wire::Envelope::Body::PULL_REPLY);
  ASSERT_TRUE(reply) << "the step completes without the dead worker";
  EXPECT_NEAR(first_value(*reply), 1.f - 0.1f * 2.f, 1e-6) << "averaged over the one worker that had data";
  c.push(1, 1.f);
  auto refused = c.expect(wire::Envelope::Body::ERROR);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->envelope().getBody().getError().getCode(), wire::ErrorCode::UNKNOWN_SENDER);
  // A worker that leaves stops counting as well.
  Outgoing leave("worker.1", 100);
  leave.body().setLeave();
  b.send(leave);
  ASSERT_TRUE(b.expect(wire::Envelope::Body::ACK));
  a.push(1, 1.f);
  a.pull(2);
  EXPECT_TRUE(a.expect(wire::Envelope::Body::PULL_REPLY)) << "worker.0 alone now completes steps";
}

// A worker that leaves and comes back as a new process (its supervisor, or a StatefulSet,
// restarted that rank) between two of the server's heartbeats: no list ever omitted it, yet the
// new process is served, while the old connection stays out.
TEST(ParameterServer, AWorkerThatLeftAndRejoinedBetweenTwoListsIsServedFromItsNewProcess) {
  ServerFixture f(/*staleness=*/2, 10, {"worker.0", "worker.1"});
  auto old_process = std::make_unique<Client>(f, "worker.1");
  old_process->pull(0);
  ASSERT_TRUE(old_process->expect(wire::Envelope::Body::PULL_REPLY));
  Outgoing leave("worker.1", 100);
  leave.body().setLeave();
  old_process->send(leave);
  ASSERT_TRUE(old_process->expect(wire::Envelope::Body::ACK));
  // The old connection is out, even though the coordinator's list still names worker.1.
  f.set_live({"worker.0", "worker.1"});
  old_process->pull(0);
  auto refused = old_process->expect(wire::Envelope::Body::ERROR);
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->envelope().getBody().getError().getCode(), wire::ErrorCode::UNKNOWN_SENDER);
  // A new process of worker.1, on its own connection: served.
  Client new_process(f, "worker.1");
  new_process.pull(0);
  EXPECT_TRUE(new_process.expect(wire::Envelope::Body::PULL_REPLY)) << "the restarted worker.1 is refused for good";
  new_process.push(0, 1.f);
  EXPECT_TRUE(new_process.expect(wire::Envelope::Body::PUSH_ACK));
}

// lr_staleness = inverse: an update is scaled by 1 / (1 + t), t = the updates other workers
// made to the chunk since this worker pulled it.
TEST(ParameterServer, InverseStalenessScalesEachUpdateByTheUpdatesItMissed) {
  for (auto mode : {LrStaleness::none, LrStaleness::inverse}) {
    ServerFixture f(/*staleness=*/100, 10, {"worker.0", "worker.1", "worker.2"},
                    [&](ServerOptions& o) { o.lr_staleness = mode; });
    Client a(f, "worker.0"), b(f, "worker.1"), c(f, "worker.2");
    for (Client* w : {&a, &b, &c}) {
      w->pull(0);
      ASSERT_TRUE(w->expect(wire::Envelope::Body::PULL_REPLY));
    }
    // All three computed on version 0; their pushes land one after another.
    for (Client* w : {&a, &b, &c}) {
      w->push(0, 1.f);
      ASSERT_TRUE(w->expect(wire::Envelope::Body::PUSH_ACK));
    }
    const bool inverse = mode == LrStaleness::inverse;
    EXPECT_NEAR(f.values()[0], 1.f - 0.1f * (inverse ? 1.f + 1.f / 2 + 1.f / 3 : 3.f), 1e-6)
        << (inverse ? "inverse" : "none") << ": staleness 0, 1 and 2";
    // a pulls again: it is up to date, so its next push is not scaled.
    a.pull(1);
    ASSERT_TRUE(a.expect(wire::Envelope::Body::PULL_REPLY));
    float before = f.values()[0];
    a.push(1, 1.f);
    ASSERT_TRUE(a.expect(wire::Envelope::Body::PUSH_ACK));
    EXPECT_NEAR(f.values()[0], before - 0.1f, 1e-6);
  }
}

// Each malformed input is dropped or refused and counted under a reason, and the server keeps
// answering well-formed requests afterwards.
TEST(ParameterServer, MalformedMessagesAreRejectedCountedAndSurvived) {
  ServerFixture f(/*staleness=*/2);
  Client good(f, "worker.0");
  zmq::socket_t raw(f.context.context(), zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(f.address());
  auto envelope_bytes = [](Outgoing& m) {
    auto frames = m.frames();
    return std::string(static_cast<const char*>(frames[0].data()), frames[0].size());
  };
  auto send_raw = [&](const std::vector<std::string>& frames) {
    for (std::size_t i = 0; i < frames.size(); ++i)
      raw.send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  };
  auto valid_push = [&](const std::string& sender, std::uint32_t key, std::uint32_t numel) {
    Outgoing m(sender, 7);
    auto p = m.body().initPush();
    p.setClock(0);
    auto list = p.initChunks(1);
    list[0].setKey(key);
    list[0].setNumel(numel);
    return envelope_bytes(m);
  };
  Outgoing pull_msg("worker.0", 1);
  pull_msg.body().initPull().setBounded(false);
  const std::string pull_bytes = envelope_bytes(pull_msg);
  Outgoing wrong_version("worker.0", 2);
  wrong_version.envelope().setVersion(99);
  wrong_version.body().initPull();
  const std::string wrong_version_bytes = envelope_bytes(wrong_version);
  const std::string floats3(12, '\0');
  std::string nan3 = floats3;
  const float nan_value = std::nanf("");
  std::memcpy(nan3.data() + 4, &nan_value, 4);
  Rng rng(1);
  std::string noise(64, '\0');
  for (auto& ch : noise) ch = static_cast<char>(rng.below(256));

  struct Case {
    const char* name;
    std::vector<std::string> frames;
    const char* reason;
  } cases[] = {
      {"random bytes", {noise}, "malformed envelope"},
      {"not whole words", {noise.substr(0, 13)}, "envelope of"},
      {"truncated envelope", {pull_bytes.substr(0, pull_bytes.size() - 8)}, "malformed envelope"},
      {"wrong protocol version", {wrong_version_bytes}, "protocol version"},
      {"payload size differs from its shape", {valid_push("worker.0", 0, 3), std::string(8, '\0')}, "push chunk key"},
      {"missing payload frame", {valid_push("worker.0", 0, 3)}, "push with"},
      {"extra frame", {pull_bytes, floats3}, "pull with"},
      {"unknown sender", {valid_push("intruder.7", 0, 3), floats3}, "unknown sender"},
      {"chunk not owned", {valid_push("worker.0", 1000, 3), floats3}, "bad push"},
      {"chunk size differs from the table", {valid_push("worker.0", 3, 3), floats3}, "bad push"},
      {"non-finite gradient", {valid_push("worker.0", 0, 3), nan3}, "bad push"},
      {"empty message", {std::string()}, "envelope of"},
  };
  for (const auto& c : cases) {
    auto before = f.counters();
    send_raw(c.frames);
    bool counted = false;
    for (int i = 0; i < 200 && !counted; ++i) {
      auto now = f.counters();
      counted = now.dropped[c.reason] > before.dropped[c.reason];
      if (!counted) std::this_thread::sleep_for(5ms);
    }
    EXPECT_TRUE(counted) << c.name << ": not counted under '" << c.reason << "'";
    good.pull(0, false);
    EXPECT_TRUE(good.expect(wire::Envelope::Body::PULL_REPLY)) << c.name << ": the server stopped serving";
  }
  auto final_counts = f.counters();
  EXPECT_GE(final_counts.total_dropped(), std::size(cases));
  EXPECT_EQ(f.values()[0], 1.f) << "no malformed push changed a parameter";
}

}  // namespace
}  // namespace shoal
