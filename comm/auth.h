// Authenticated members (auth.keys, docs/authentication.md): ZeroMQ CURVE on every socket.
// A job's key directory, made by `shoal keys generate DIR`, holds
//   server.key        the keypair every listening socket (coordinator, servers) serves with
//                     (server.pub, its public half, where a folder is only for workers);
//   <member>.key      one keypair per member: coordinator, ps.0 .. ps.S-1, worker.0 .. worker.W-1;
//   members           "<member> <public key>" per line: who may connect, and as whom.
// Keys are ZeroMQ's Z85 text (40 characters). A listening socket accepts a connection only
// from a public key in `members` (the ZAP handler, comm/transport.cc), and the member that key
// belongs to is the connection's user id: a message whose envelope names another sender is
// dropped, so one member cannot speak for another.
#pragma once

#include <map>
#include <string>

namespace shoal {

struct CurveKeyPair {
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;
};

struct JobKeys {
  std::string directory;
  std::string member;  // whose keys these are: "coordinator", "ps.1", "worker.0"
  CurveKeyPair server;
  CurveKeyPair own;
  std::map<std::string, std::string> members;  // public key -> member
};

// Writes a new job's keys into `dir` (created; it must not hold keys already). Secret files
// are readable by their owner (and group: a Kubernetes Secret is mounted with fsGroup) only.
// `per_role`: one folder per role instead (dir/coordinator, dir/ps, dir/worker), each with the
// members file and only its role's secret keys; worker/ has server.pub, not server.key. A
// folder is then one Kubernetes Secret, mounted only in its role's pods.
// Throws ConfigError (a bad count, keys already there) or IoError.
void generate_job_keys(const std::string& dir, int servers, int workers, bool per_role = false);

// Loads what `member` needs: server.key, or where it is absent server.pub (then `server` has no
// secret key, and this member cannot serve). ConfigError naming the file for a missing, malformed or
// inconsistent one (a secret key that is not the public key's).
JobKeys load_job_keys(const std::string& dir, const std::string& member);

// The member a process of `role` ("coordinator", "ps", "worker") and `rank` authenticates as.
// ConfigError when the rank is not known (node.rank -1): with auth.keys, a key is a rank's.
std::string key_member(const std::string& role, long long rank);

// Whether a connection authenticated as `user` may send as `sender`: its own name, or before
// it registered, "<its role>.starting-<anything>".
bool sender_allowed(const std::string& user, const std::string& sender);

// "worker.3" -> 3; "coordinator" -> -1.
int member_rank(const std::string& member);

}  // namespace shoal
