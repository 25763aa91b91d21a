#include "comm/auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "base/error.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kZ85KeyLength = 40;

bool is_z85_key(const std::string& text) {
  if (text.size() != kZ85KeyLength) return false;
  std::uint8_t bytes[32];
  return zmq_z85_decode(bytes, text.c_str()) != nullptr;
}

void write_private(const std::string& path, const std::string& text, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  SHOAL_REQUIRE(fd >= 0, IoError, path << ": cannot create: " << std::strerror(errno));
  const char* p = text.data();
  std::size_t left = text.size();
  while (left > 0) {
    ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      ::close(fd);
      SHOAL_THROW(IoError, path << ": write failed: " << std::strerror(e));
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  SHOAL_REQUIRE(synced, IoError, path << ": fsync failed: " << std::strerror(errno));
}

CurveKeyPair new_keypair() {
  char pub[41], sec[41];
  SHOAL_REQUIRE(zmq_curve_keypair(pub, sec) == 0, ConfigError,
                "this libzmq cannot make CURVE keys (built without libsodium?): " << zmq_strerror(zmq_errno()));
  return {pub, sec};
}

std::string key_file_text(const std::string& member, const CurveKeyPair& keys) {
  return "# Shoal CURVE keypair of " + member + " (Z85). Keep it secret: it proves who you are to the job.\n" +
         "public = " + keys.public_key + "\nsecret = " + keys.secret_key + "\n";
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SHOAL_REQUIRE(in, ConfigError,
                path << ": cannot read (auth.keys: make the job's keys with `shoal keys generate DIR`)");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// `public_only`: a server.pub (the public half of server.key, all a client needs) has no
// secret line, and must not have one.
CurveKeyPair read_keypair(const std::string& path, bool public_only = false) {
  std::istringstream in(read_text(path));
  CurveKeyPair keys;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    auto eq = line.find('=');
    SHOAL_REQUIRE(eq != std::string::npos, ConfigError,
                  path << ":" << number << ": expected 'public = KEY' or 'secret = KEY'");
    auto trim = [](std::string s) {
      s.erase(0, s.find_first_not_of(" \t\r"));
      s.erase(s.find_last_not_of(" \t\r") + 1);
      return s;
    };
    std::string name = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    SHOAL_REQUIRE(name == "public" || name == "secret", ConfigError,
                  path << ":" << number << ": unknown field '" << name << "' (public, secret)");
    SHOAL_REQUIRE(is_z85_key(value), ConfigError,
                  path << ":" << number << ": the " << name << " key is not a 40-character Z85 CURVE key");
    (name == "public" ? keys.public_key : keys.secret_key) = value;
  }
  if (public_only) {
    SHOAL_REQUIRE(!keys.public_key.empty() && keys.secret_key.empty(), ConfigError,
                  path << ": needs the public key only ('public = KEY')");
    return keys;
  }
  SHOAL_REQUIRE(!keys.public_key.empty() && !keys.secret_key.empty(), ConfigError,
                path << ": needs both a public and a secret key");
  char derived[41];
  SHOAL_REQUIRE(zmq_curve_public(derived, keys.secret_key.c_str()) == 0 && keys.public_key == derived, ConfigError,
                path << ": the secret key does not belong to the public key");
  return keys;
}

bool valid_member_name(const std::string& name) {
  if (name == "coordinator") return true;
  for (const char* role : {"ps.", "worker."}) {
    const std::size_t n = std::strlen(role);
    if (name.rfind(role, 0) == 0 && name.size() > n && name.size() <= n + 6 &&
        name.find_first_not_of("0123456789", n) == std::string::npos)
      return true;
  }
  return false;
}

}  // namespace

void generate_job_keys(const std::string& dir, int servers, int workers, bool per_role) {
  SHOAL_REQUIRE(servers >= 0 && servers <= 10000 && workers >= 1 && workers <= 100000, ConfigError,
                "keys generate: --servers must be in [0, 10000] and --workers in [1, 100000]");
  std::error_code ec;
  fs::create_directories(dir, ec);
  SHOAL_REQUIRE(!ec, IoError, dir << ": cannot create: " << ec.message());
  for (const char* done : {"members", "coordinator/members", "ps/members", "worker/members"})
    SHOAL_REQUIRE(!fs::exists(fs::path(dir) / done), ConfigError,
                  dir << " already holds a job's keys (" << done << "): remove it first, or use another directory");
  std::vector<std::string> names{"coordinator"};
  for (int s = 0; s < servers; ++s) names.push_back("ps." + std::to_string(s));
  for (int w = 0; w < workers; ++w) names.push_back("worker." + std::to_string(w));
  // Per role: coordinator/, ps/ and worker/ each hold only their own members' secret keys, and
  // worker/ (workers only connect) the public half of server.key, so that a worker's pod can
  // act neither as a server nor as another role's member.
  auto folder_of = [&](const std::string& name) {
    if (!per_role) return fs::path(dir);
    return fs::path(dir) / name.substr(0, name.find('.'));
  };
  const std::vector<std::string> roles =
      per_role ? std::vector<std::string>{"coordinator", "ps", "worker"} : std::vector<std::string>{""};
  for (const auto& role : roles) {
    fs::create_directories(fs::path(dir) / role, ec);
    SHOAL_REQUIRE(!ec, IoError, (fs::path(dir) / role).string() << ": cannot create: " << ec.message());
  }
  const CurveKeyPair server = new_keypair();
  for (const auto& role : roles) {
    if (role == "worker")
      write_private((fs::path(dir) / role / "server.pub").string(),
                    "# Shoal CURVE public key of the job's listening sockets (Z85): all a worker needs.\n"
                    "public = " +
                        server.public_key + "\n",
                    0644);
    else
      write_private((fs::path(dir) / role / "server.key").string(),
                    key_file_text("the job's listening sockets", server), 0640);
  }
  std::string members = "# The members of a Shoal job and their CURVE public keys (shoal keys generate).\n";
  for (const auto& name : names) {
    CurveKeyPair keys = new_keypair();
    write_private((folder_of(name) / (name + ".key")).string(), key_file_text(name, keys), 0640);
    members += name + " " + keys.public_key + "\n";
  }
  // Last: its presence says the directory is complete.
  for (const auto& role : roles) write_private((fs::path(dir) / role / "members").string(), members, 0644);
}

JobKeys load_job_keys(const std::string& dir, const std::string& member) {
  SHOAL_REQUIRE(valid_member_name(member), ConfigError, "'" << member << "' is not a member's name");
  JobKeys keys;
  keys.directory = dir;
  keys.member = member;
  // A worker of a per-role key folder has only server.pub: it can connect, not serve.
  const fs::path server_key = fs::path(dir) / "server.key", server_pub = fs::path(dir) / "server.pub";
  keys.server = !fs::exists(server_key) && fs::exists(server_pub) ? read_keypair(server_pub.string(), true)
                                                                  : read_keypair(server_key.string());
  keys.own = read_keypair((fs::path(dir) / (member + ".key")).string());
  const std::string path = (fs::path(dir) / "members").string();
  std::istringstream in(read_text(path));
  std::string line;
  int number = 0;
  std::map<std::string, std::string> names;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string name, key, extra;
    fields >> name >> key >> extra;
    SHOAL_REQUIRE(valid_member_name(name) && is_z85_key(key) && extra.empty(), ConfigError,
                  path << ":" << number << ": expected '<member> <40-character Z85 public key>'");
    SHOAL_REQUIRE(names.emplace(name, key).second, ConfigError, path << ":" << number << ": " << name << " twice");
    SHOAL_REQUIRE(keys.members.emplace(key, name).second, ConfigError,
                  path << ":" << number << ": " << name << " has the key of " << keys.members[key]);
  }
  auto own = names.find(member);
  SHOAL_REQUIRE(own != names.end(), ConfigError, path << ": has no key for " << member);
  SHOAL_REQUIRE(own->second == keys.own.public_key, ConfigError,
                path << ": the key it lists for " << member << " is not the one in " << member << ".key");
  return keys;
}

std::string key_member(const std::string& role, long long rank) {
  if (role == "coordinator") return role;
  SHOAL_REQUIRE(rank >= 0, ConfigError,
                "auth.keys: a " << role << " needs its rank (node.rank) to know which key is its own");
  return role + "." + std::to_string(rank);
}

bool sender_allowed(const std::string& user, const std::string& sender) {
  if (sender == user) return true;
  const auto dot = user.find('.');
  if (dot == std::string::npos) return false;
  const std::string starting = user.substr(0, dot) + ".starting-";
  return sender.size() > starting.size() && sender.rfind(starting, 0) == 0;
}

int member_rank(const std::string& member) {
  const auto dot = member.find('.');
  if (dot == std::string::npos) return -1;
  return std::stoi(member.substr(dot + 1));
}

}  // namespace shoal
