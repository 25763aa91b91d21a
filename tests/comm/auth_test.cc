// auth.keys: the key directory (generated, loaded, refused when bad) and CURVE between real
// ZeroMQ sockets over loopback TCP: members get through as themselves, strangers do not, and
// a member cannot speak under another member's name.
#include "comm/auth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "comm/transport.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  testing::TempDir dir;
  fs::path path{dir.path()};
};

void write(const fs::path& path, const std::string& text) {
  fs::permissions(path, fs::perms::owner_all, fs::perm_options::add);
  std::ofstream(path, std::ios::trunc) << text;
}

TEST(Auth, GeneratedKeysLoadForEveryMemberAndOnlyThem) {
  TempDir dir;
  generate_job_keys(dir.path.string(), 2, 3);
  for (const char* member : {"coordinator", "ps.0", "ps.1", "worker.0", "worker.1", "worker.2"}) {
    JobKeys keys = load_job_keys(dir.path.string(), member);
    EXPECT_EQ(keys.member, member);
    EXPECT_EQ(keys.members.size(), 6u);
    EXPECT_EQ(keys.members.at(keys.own.public_key), member);
    EXPECT_EQ(keys.server.public_key.size(), 40u);
  }
  // Secrets are not for everyone.
  auto perms = fs::status(dir.path / "worker.1.key").permissions();
  EXPECT_EQ(perms & fs::perms::others_read, fs::perms::none);
  EXPECT_THROW(load_job_keys(dir.path.string(), "worker.3"), ConfigError);  // none made
  EXPECT_THROW(load_job_keys(dir.path.string(), "ps.x"), ConfigError);
  EXPECT_THROW(generate_job_keys(dir.path.string(), 2, 3), ConfigError);  // keys already there
  EXPECT_THROW(generate_job_keys((dir.path / "more").string(), 1, 0), ConfigError);
}

TEST(Auth, BadKeyFilesAreConfigErrorsThatNameTheFile) {
  struct Case {
    const char* name;
    const char* file;
    std::function<std::string(const std::string&)> edit;
  };
  const std::vector<Case> cases{
      {"missing", "worker.0.key", [](const std::string&) { return std::string(); }},
      {"truncated key", "worker.0.key",
       [](const std::string& t) { return t.substr(0, t.find("secret = ") + 20) + "\n"; }},
      {"no secret line", "worker.0.key", [](const std::string& t) { return t.substr(0, t.find("secret = ")); }},
      {"unknown field", "server.key", [](const std::string& t) { return t + "extra = 1\n"; }},
      {"not Z85", "server.key",
       [](const std::string& t) {
         std::string s = t;
         s[s.find("public = ") + 12] = '"';  // not in Z85's alphabet
         return s;
       }},
      {"secret of another key", "worker.0.key",
       [](const std::string& t) {
         std::string s = t;
         char& c = s[s.find("secret = ") + 15];
         c = c == 'a' ? 'b' : 'a';
         return s;
       }},
      {"members line", "members", [](const std::string& t) { return t + "worker.9\n"; }},
      {"members twice", "members",
       [](const std::string& t) {
         return t + t.substr(t.find("coordinator"), t.find('\n', t.find("coordinator")) - t.find("coordinator") + 1);
       }},
      {"members without us", "members",
       [](const std::string& t) {
         auto at = t.find("worker.0 ");
         return t.substr(0, at) + t.substr(t.find('\n', at) + 1);
       }},
  };
  for (const auto& c : cases) {
    TempDir dir;
    generate_job_keys(dir.path.string(), 1, 1);
    const fs::path file = dir.path / c.file;
    const std::string edited = c.edit(read_whole_file(file.string()));
    if (edited.empty())
      fs::remove(file);
    else
      write(file, edited);
    try {
      load_job_keys(dir.path.string(), "worker.0");
      ADD_FAILURE() << c.name << ": loaded";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(c.file), std::string::npos) << c.name << ": " << e.what();
    }
  }
}

TEST(Auth, AMemberSpeaksAsItselfOrAsItsRoleBeforeRegistering) {
  struct Case {
    const char* user;
    const char* sender;
    bool allowed;
  };
  const std::vector<Case> cases{
      {"worker.1", "worker.1", true},
      {"worker.1", "worker.starting-42", true},
      {"worker.1", "worker.0", false},
      {"worker.1", "ps.1", false},
      {"worker.1", "ps.starting-42", false},
      {"worker.1", "worker.starting-", false},
      {"coordinator", "coordinator", true},
      {"coordinator", "coordinator.starting-1", false},
      {"ps.0", "coordinator", false},
      {"", "worker.0", false},
      {"worker.1", "", false},
  };
  for (const auto& c : cases) EXPECT_EQ(sender_allowed(c.user, c.sender), c.allowed) << c.user << " as " << c.sender;
  EXPECT_EQ(key_member("coordinator", -1), "coordinator");
  EXPECT_EQ(key_member("ps", 3), "ps.3");
  EXPECT_THROW(key_member("worker", -1), ConfigError);
  EXPECT_EQ(member_rank("worker.12"), 12);
  EXPECT_EQ(member_rank("coordinator"), -1);
}

// A server socket of `server_net` and what it received within `wait`.
std::vector<Incoming> receive_all(ServerSocket& server, std::chrono::milliseconds wait) {
  std::vector<Incoming> got;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (std::chrono::steady_clock::now() < deadline)
    if (auto in = server.receive(std::chrono::milliseconds(20))) got.push_back(std::move(*in));
  return got;
}

void send_heartbeat(ClientSocket& client, const std::string& sender) {
  Outgoing msg(sender, 1);
  msg.body().initHeartbeat();
  client.send(msg, std::chrono::milliseconds(1000));
}

TEST(Auth, CurveAdmitsMembersAsThemselvesAndRefusesEveryoneElse) {
  TempDir dir, other;
  generate_job_keys(dir.path.string(), 1, 2);
  generate_job_keys(other.path.string(), 1, 2);  // another job's keys
  const Logger log("test", LogLevel::warn);

  Network server_net;
  use_job_keys(server_net, dir.path.string(), "ps.0", log, nullptr);
  ServerSocket server(server_net, "tcp://127.0.0.1:0", log);

  // A member, as itself and (dropped) as another member.
  Network member_net;
  use_job_keys(member_net, dir.path.string(), "worker.1", log, nullptr);
  ClientSocket member(member_net, server.endpoint(), log);
  send_heartbeat(member, "worker.1");
  send_heartbeat(member, "worker.0");
  send_heartbeat(member, "worker.starting-7");

  // Strangers: no CURVE at all, and CURVE with another job's member key (and server key).
  Network plain_net;
  ClientSocket plain(plain_net, server.endpoint(), log);
  send_heartbeat(plain, "worker.0");
  Network stranger_net;
  use_job_keys(stranger_net, other.path.string(), "worker.0", log, nullptr);
  ClientSocket stranger(stranger_net, server.endpoint(), log);
  send_heartbeat(stranger, "worker.0");
  // A stranger who knows this job's server key (it is in every pod) but has no member key.
  JobKeys half = load_job_keys(other.path.string(), "worker.1");
  half.server = load_job_keys(dir.path.string(), "ps.0").server;
  Network half_net;
  half_net.use_curve(half, log);
  ClientSocket half_client(half_net, server.endpoint(), log);
  send_heartbeat(half_client, "worker.1");

  // Wait for the observable outcome: three refused handshakes and the member's messages.
  std::vector<Incoming> got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((server_net.refused_connections() < 3 || got.size() < 2) && std::chrono::steady_clock::now() < deadline)
    for (auto& in : receive_all(server, std::chrono::milliseconds(50))) got.push_back(std::move(in));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].sender(), "worker.1");
  EXPECT_EQ(got[0].user, "worker.1");
  EXPECT_EQ(got[1].sender(), "worker.starting-7");
  EXPECT_EQ(got[1].user, "worker.1");
  EXPECT_EQ(server.counters().dropped.at("sender is not its key's member"), 1u);
  EXPECT_GE(server_net.refused_connections(), 3u);
  EXPECT_GE(server.counters().dropped.at("connection refused (auth.keys)"), 3u);
  // Nothing more gets through (the strangers' queued messages stay undelivered).
  EXPECT_TRUE(receive_all(server, std::chrono::milliseconds(300)).empty());
}

// --per-role: each role's folder holds only its own secret keys; a worker with server.pub
// connects to a server as itself, and cannot serve.
TEST(Auth, PerRoleFoldersHoldOnlyTheirRolesSecretsAndWorkersCanConnectButNotServe) {
  TempDir dir;
  generate_job_keys(dir.path.string(), 2, 2, true);
  EXPECT_FALSE(fs::exists(dir.path / "members"));  // no flat folder
  auto files = [&](const char* role) {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir.path / role)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  };
  EXPECT_EQ(files("coordinator"), (std::vector<std::string>{"coordinator.key", "members", "server.key"}));
  EXPECT_EQ(files("ps"), (std::vector<std::string>{"members", "ps.0.key", "ps.1.key", "server.key"}));
  EXPECT_EQ(files("worker"), (std::vector<std::string>{"members", "server.pub", "worker.0.key", "worker.1.key"}));
  const JobKeys coordinator = load_job_keys((dir.path / "coordinator").string(), "coordinator");
  const JobKeys ps = load_job_keys((dir.path / "ps").string(), "ps.1");
  const JobKeys worker = load_job_keys((dir.path / "worker").string(), "worker.0");
  EXPECT_EQ(worker.server.public_key, ps.server.public_key);
  EXPECT_EQ(coordinator.server.secret_key, ps.server.secret_key);
  EXPECT_TRUE(worker.server.secret_key.empty());
  EXPECT_EQ(worker.members, ps.members);
  EXPECT_EQ(worker.members.size(), 5u);
  // A worker's folder cannot make a coordinator, a server or another role's member.
  EXPECT_THROW(load_job_keys((dir.path / "worker").string(), "ps.0"), ConfigError);
  EXPECT_THROW(load_job_keys((dir.path / "ps").string(), "coordinator"), ConfigError);
  EXPECT_THROW(generate_job_keys(dir.path.string(), 1, 1, true), ConfigError);  // already there
  // server.pub with a secret line is refused, naming the file.
  {
    TempDir bad;
    generate_job_keys(bad.path.string(), 1, 1, true);
    const fs::path pub = bad.path / "worker" / "server.pub";
    std::ifstream in(bad.path / "ps" / "server.key");
    write(pub, std::string(std::istreambuf_iterator<char>(in), {}));
    try {
      load_job_keys((bad.path / "worker").string(), "worker.0");
      ADD_FAILURE() << "a server.pub with a secret key was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("server.pub"), std::string::npos) << e.what();
    }
  }

  const Logger log("test", LogLevel::warn);
  Network server_net;
  use_job_keys(server_net, (dir.path / "ps").string(), "ps.0", log, nullptr);
  ServerSocket server(server_net, "tcp://127.0.0.1:0", log);
  Network worker_net;
  use_job_keys(worker_net, (dir.path / "worker").string(), "worker.1", log, nullptr);
  ClientSocket client(worker_net, server.endpoint(), log);
  send_heartbeat(client, "worker.1");
  std::vector<Incoming> got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (got.empty() && std::chrono::steady_clock::now() < deadline)
    for (auto& in : receive_all(server, std::chrono::milliseconds(50))) got.push_back(std::move(in));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].user, "worker.1");
  try {
    ServerSocket refused(worker_net, "tcp://127.0.0.1:0", log);
    ADD_FAILURE() << "a worker with only server.pub could serve";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("server.pub"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace shoal

namespace shoal {
namespace {

// Faults on an authenticated socket: a duplicated message keeps its user id, a delayed one
// arrives with it later, a dropped one is gone; an impostor's message stays refused whatever
// the faults do to it.
TEST(Auth, InjectedFaultsKeepEachMessagesProvenMember) {
  TempDir dir;
  generate_job_keys(dir.path.string(), 1, 2);
  const Logger log("test", LogLevel::warn);
  FaultPlan faults;
  faults.add(FaultRule{wire::Envelope::Body::HEARTBEAT, FaultAction::duplicate, "worker.1", 1, {}});
  faults.add(FaultRule{wire::Envelope::Body::HEARTBEAT, FaultAction::delay, "worker.starting-", 1,
                       std::chrono::milliseconds(200)});
  faults.add(FaultRule{wire::Envelope::Body::HEARTBEAT, FaultAction::drop, "worker.1", 1, {}});
  Network server_net(&faults);
  use_job_keys(server_net, dir.path.string(), "ps.0", log, nullptr);
  ServerSocket server(server_net, "tcp://127.0.0.1:0", log);
  Network member_net;
  use_job_keys(member_net, dir.path.string(), "worker.1", log, nullptr);
  ClientSocket member(member_net, server.endpoint(), log);
  send_heartbeat(member, "worker.1");           // duplicated
  send_heartbeat(member, "worker.0");           // an impostor's: refused before any fault rule
  send_heartbeat(member, "worker.starting-9");  // delayed
  send_heartbeat(member, "worker.1");           // dropped
  send_heartbeat(member, "worker.1");           // delivered

  std::vector<Incoming> got;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (got.size() < 4 && std::chrono::steady_clock::now() < deadline)
    for (auto& in : receive_all(server, std::chrono::milliseconds(50))) got.push_back(std::move(in));
  for (auto& in : receive_all(server, std::chrono::milliseconds(300))) got.push_back(std::move(in));
  std::vector<std::string> senders;
  for (const auto& in : got) {
    EXPECT_EQ(in.user, "worker.1") << in.sender();
    senders.push_back(in.sender());
  }
  // The first twice (duplicated), the delayed one, the last one; not the dropped one.
  std::sort(senders.begin(), senders.end());
  EXPECT_EQ(senders, (std::vector<std::string>{"worker.1", "worker.1", "worker.1", "worker.starting-9"}));
  EXPECT_EQ(server.counters().dropped.at("sender is not its key's member"), 1u);
  EXPECT_EQ(server.counters().injected_faults, 3u);
}

}  // namespace
}  // namespace shoal
