// auth.keys on a real local job (`shoal launch --local`, processes on loopback): strangers and
// a member posing as another are refused by the coordinator and the servers, counted and
// logged, while the job trains to the end.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <regex>
#include <string>
#include <thread>

#include "core/auth.h"
#include "core/transport.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using testing::Subprocess;
using testing::TempDir;

const std::string kJob = std::string(SHOAL_SOURCE_DIR) + "/examples/fashion_mnist_async.ini";

// The first match of `pattern`'s group 1 in the process's output, waited for up to 60 s.
std::string wait_for_match(Subprocess& p, const std::string& pattern) {
  const std::regex re(pattern);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    const std::string out = p.output();
    if (std::regex_search(out, m, re)) return m[1];
    if (!p.running()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ADD_FAILURE() << "no line matching " << pattern << " in:\n" << p.output();
  return "";
}

// Sends `message` and returns the reply, or nothing within `wait`.
std::optional<Incoming> ask(ClientSocket& client, Outgoing& message, std::chrono::milliseconds wait) {
  client.send(message, std::chrono::milliseconds(1000));
  return client.receive(wait);
}

Outgoing register_as(const std::string& sender, int rank) {
  Outgoing msg(sender, 1);
  auto reg = msg.body().initRegister();
  reg.setRole(wire::Role::WORKER);
  reg.setRank(rank);
  reg.setNonce(0x5ea1 + static_cast<std::uint64_t>(rank));
  return msg;
}

Outgoing unbounded_pull(const std::string& sender) {
  Outgoing msg(sender, 7);
  auto pull = msg.body().initPull();
  pull.setBounded(false);
  return msg;
}

TEST(AuthCluster, StrangersAndImpostorsAreRefusedWhileTheJobTrains) {
  TempDir keys;
  auto generated = testing::run({SHOAL_BINARY, "keys", "generate", keys.path(), "--servers", "2", "--workers=2"});
  ASSERT_EQ(generated.exit_code, 0) << generated.output;

  Subprocess job({SHOAL_BINARY, "launch", "--local", kJob, "--model=mlp", "--train.epochs=6",
                  "--auth.keys=" + keys.path()});
  const std::string coordinator = wait_for_match(job, R"(coordinator at (tcp://127\.0\.0\.1:\d+))");
  const std::string server = wait_for_match(job, R"(listening on (tcp://127\.0\.0\.1:\d+), registered as ps\.0)");
  ASSERT_FALSE(coordinator.empty() || server.empty());
  const Logger log("rogue", LogLevel::off);
  const auto quiet = std::chrono::milliseconds(1500);

  {  // A member (worker.1's key) posing as worker.0.
    Network member;
    member.use_curve(load_job_keys(keys.path(), "worker.1"), log);
    ClientSocket to_server(member, server, log);
    auto as_other = unbounded_pull("worker.0");
    EXPECT_FALSE(ask(to_server, as_other, quiet)) << "ps.0 answered worker.1's key speaking as worker.0";
    // As itself, the same request is answered: the refusal above is about the name, not the link.
    auto as_itself = unbounded_pull("worker.1");
    auto reply = ask(to_server, as_itself, std::chrono::seconds(30));
    ASSERT_TRUE(reply) << "ps.0 did not answer worker.1's own key:\n" << job.output();
    EXPECT_EQ(reply->kind(), wire::Envelope::Body::PULL_REPLY);
    // Registering under another rank is refused by the coordinator, with the reason.
    ClientSocket to_coordinator(member, coordinator, log);
    auto reg = register_as("worker.starting-3", 0);
    auto refused = ask(to_coordinator, reg, std::chrono::seconds(30));
    ASSERT_TRUE(refused);
    ASSERT_EQ(refused->kind(), wire::Envelope::Body::ERROR);
    EXPECT_NE(std::string(refused->envelope().getBody().getError().getMessage().cStr())
                  .find("the key of worker.1 cannot register as worker.0"),
              std::string::npos);
  }

  {  // No keys at all: the handshake fails; nothing reaches the coordinator or the server.
    Network plain;
    ClientSocket to_coordinator(plain, coordinator, log);
    auto reg = register_as("worker.starting-1", 0);
    EXPECT_FALSE(ask(to_coordinator, reg, quiet)) << "a process without keys was answered";
    ClientSocket to_server(plain, server, log);
    auto pull = unbounded_pull("worker.0");
    EXPECT_FALSE(ask(to_server, pull, quiet)) << "a process without keys read parameters";
  }
  {  // Another job's keys: refused by the ZAP handler.
    TempDir other;
    generate_job_keys(other.path(), 2, 2);
    Network stranger;
    stranger.use_curve(load_job_keys(other.path(), "worker.0"), log);
    ClientSocket to_coordinator(stranger, coordinator, log);
    auto reg = register_as("worker.starting-2", 0);
    EXPECT_FALSE(ask(to_coordinator, reg, quiet)) << "another job's key was answered";
  }
  // Every refusal above happened while the job ran: it trains on to its end.
  EXPECT_EQ(job.output().find("final test accuracy"), std::string::npos) << "the job ended before the checks";
  ASSERT_EQ(job.wait(std::chrono::minutes(5)), 0) << job.output();
  const std::string out = job.output();
  EXPECT_NE(out.find("final test accuracy"), std::string::npos) << out;
  // Counted and logged where they were refused.
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(coordinator +\|.*dropped message \(connection refused \(auth\.keys\))")))
      << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(ps\.0 +\|.*dropped message \(connection refused \(auth\.keys\))")))
      << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(ps\.0 +\|.*dropped message \(sender is not its key's member)")))
      << out;
  EXPECT_TRUE(std::regex_search(out, std::regex(R"(coordinator +\|.*refused a registration as worker\.0)"))) << out;
  EXPECT_NE(out.find("authenticated as worker.1"), std::string::npos) << out;
}

}  // namespace
}  // namespace shoal
