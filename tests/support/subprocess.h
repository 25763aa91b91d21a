// Real processes for tests: start a command with extra environment, capture its output to a
// file, wait with a deadline (killing it past the deadline), or signal it. Used by the CLI and
// multi-process tests so they exercise the real `shoal` binary.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace shoal::testing {

class Subprocess {
 public:
  // Starts argv[0] with argv; env entries are added to (or replace) the inherited environment.
  Subprocess(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {});
  ~Subprocess();  // kills the process if still running
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  // Waits up to `timeout`; returns the exit code, 128+signal if killed by a signal, or -1 on
  // timeout (the process is then killed with SIGKILL).
  int wait(std::chrono::milliseconds timeout);
  void signal(int sig);
  bool running();
  pid_t pid() const { return pid_; }
  std::string output() const;  // stdout and stderr so far

 private:
  pid_t pid_ = -1;
  int status_ = -1;
  bool done_ = false;
  std::string log_path_;
};

struct RunResult {
  int exit_code;
  std::string output;
};

// Runs to completion (or timeout) and returns exit code and output.
RunResult run(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {},
              std::chrono::milliseconds timeout = std::chrono::minutes(5));

// A fresh temporary directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

std::string read_file(const std::string& path);
// Lines of `text` that contain `needle`.
std::vector<std::string> lines_with(const std::string& text, const std::string& needle);
// The number after "key": in a JSON line, or NaN.
double json_number(const std::string& line, const std::string& key);
// A TCP port on 127.0.0.1 that was free a moment ago.
int free_port();
void write_file(const std::string& path, const std::string& content);

}  // namespace shoal::testing
