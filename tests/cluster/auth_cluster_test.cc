// auth.keys on a real local job (`shoal launch --local`, processes on loopback): strangers and
// a member posing as another are refused by the coordinator and the servers, counted and
// logged, while the job goes on training (then stops cleanly on SIGTERM).
#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <optional>
#include <regex>
#include <string>
#include <thread>

#include "comm/auth.h"
#include "comm/transport.h"
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

  // Long enough to outlast the checks whatever the machine: stopped (SIGTERM) once it has gone
  // on training after them.
  Subprocess job({SHOAL_BINARY, "launch", "--local", kJob, "--model=mlp", "--train.epochs=1000",
                  "--data.train_limit=6000", "--data.test_limit=500", "--auth.keys=" + keys.path()});
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
  // The job is unharmed: it trains two more epochs after the refusals, then stops cleanly on SIGTERM.
  auto epoch_lines = [&job] {
    const std::string out = job.output();
    std::size_t n = 0;
    for (std::size_t at = out.find("/1000  train loss"); at != std::string::npos;
         at = out.find("/1000  train loss", at + 1))
      ++n;
    return n;
  };
  const std::size_t before = epoch_lines();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  while (epoch_lines() < before + 2 && job.running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_GE(epoch_lines(), before + 2) << "the job did not go on training after the refusals:\n" << job.output();
  job.signal(SIGTERM);
  ASSERT_EQ(job.wait(std::chrono::minutes(1)), 0) << job.output();
  const std::string out = job.output();
  // Counted and logged where they were refused.
  EXPECT_TRUE(
      std::regex_search(out, std::regex(R"(coordinator +\|.*dropped message \(connection refused \(auth\.keys\))")))
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
