#include "base/process.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>

namespace shoal {

void tune_allocator() {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

namespace {
// Binds 127.0.0.1:port (0: any) as a listener would (SO_REUSEADDR, as ZeroMQ does); the port
// bound, or -1.
int try_bind(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  socklen_t len = sizeof(addr);
  int bound = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0)
    bound = ntohs(addr.sin_port);
  close(fd);
  return bound;
}
}  // namespace

int free_loopback_port() {
  int ephemeral = 32768;  // Linux's default start of the ephemeral range
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  if (!(range >> ephemeral)) ephemeral = 32768;
  const int first = 10000, last = ephemeral - 1;
  if (last - first >= 1000) {
    std::mt19937 draw(std::random_device{}());
    std::uniform_int_distribution<int> port(first, last);
    for (int attempt = 0; attempt < 100; ++attempt)
      if (const int p = try_bind(port(draw)); p > 0) return p;
  }
  return try_bind(0);  // the range leaves no room below it: any free port
}

namespace {
sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}
}  // namespace

StopSignals::StopSignals() {
  sigset_t set = stop_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  thread_ = std::thread(&StopSignals::receive, this);
}

StopSignals::~StopSignals() {
  quit_ = true;
  if (thread_.joinable()) thread_.join();
}

void StopSignals::receive() {
  sigset_t set = stop_set();
  const timespec tick{0, 50 * 1000 * 1000};  // the destructor is noticed within 50 ms
  while (!quit_) {
    siginfo_t info{};
    int sig = sigtimedwait(&set, &info, &tick);
    if (sig < 0) continue;  // EAGAIN (tick) or EINTR
    if (requested_.exchange(true)) {
      // The second one: the user (or a supervisor) insists. Nothing graceful is left to wait for.
      char line[96];
      int n = std::snprintf(line, sizeof(line), "shoal: signal %d again: exiting now\n", sig);
      if (n > 0) (void)!write(STDERR_FILENO, line, static_cast<std::size_t>(n));
      _exit(128 + sig);
    }
    signal_ = sig;
  }
}

void unblock_stop_signals() {
  sigset_t set = stop_set();
  sigprocmask(SIG_UNBLOCK, &set, nullptr);
}

void unblock_all_signals() {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
}

std::int64_t peak_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return 0;
  char line[256];
  long long kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr)
    if (std::sscanf(line, "VmHWM: %lld kB", &kib) == 1) break;
  std::fclose(f);
  return static_cast<std::int64_t>(kib) * 1024;
}

}  // namespace shoal
