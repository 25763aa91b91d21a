#include "base/process.h"

#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <ctime>

namespace shoal {

void tune_allocator() {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
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
