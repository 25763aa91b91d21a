#include "core/process.h"

#include <malloc.h>
#include <signal.h>

namespace shoal {

void tune_allocator() {
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

namespace {
std::atomic<bool> g_termination_requested{false};
extern "C" void on_termination(int) { g_termination_requested = true; }
}  // namespace

const std::atomic<bool>& install_termination_request() {
  static_assert(std::atomic<bool>::is_always_lock_free, "the flag is set from a signal handler");
  struct sigaction sa {};
  sa.sa_handler = on_termination;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  return g_termination_requested;
}

}  // namespace shoal
