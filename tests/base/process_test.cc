// StopSignals: SIGTERM and SIGINT are received by a thread of their own and never run code on
// a compute thread (oneDNN's JIT GEMM kernels corrupt the heap when a signal interrupts them).
#include "base/process.h"
#include "compute/devices/devices.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <vector>

#include "compute/backend.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;

bool blocked_here(int sig) {
  sigset_t current;
  pthread_sigmask(SIG_BLOCK, nullptr, &current);
  return sigismember(&current, sig) == 1;
}

bool wait_until(const std::atomic<bool>& flag, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!flag && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  return flag;
}

TEST(StopSignals, SigtermBecomesAStopRequestAndNoComputeThreadCanReceiveIt) {
  StopSignals signals;
  EXPECT_TRUE(blocked_here(SIGTERM));
  EXPECT_TRUE(blocked_here(SIGINT));
  // A compute thread started afterwards (as oneDNN's, OpenMP's and ZeroMQ's are) inherits the
  // mask, and keeps computing the same product while the process is signalled.
  std::atomic<bool> inherited{false}, done{false}, same{true};
  std::thread compute([&] {
    inherited = blocked_here(SIGTERM) && blocked_here(SIGINT);
    auto backend = make_backend(BackendOptions{Device::cpu(), 1});
    Tensor x = backend->allocate(Shape{64, 784}), w = backend->allocate(Shape{256, 784});
    Tensor y = backend->allocate(Shape{64, 256}), first = backend->allocate(Shape{64, 256});
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = static_cast<float>(i % 7) * 0.25f;
    for (std::int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] = static_cast<float>(i % 5) * 0.5f;
    backend->linear_forward(x, w, nullptr, first);
    while (!done) {
      backend->linear_forward(x, w, nullptr, y);
      for (std::int64_t i = 0; i < y.numel(); ++i)
        if (y.data<float>()[i] != first.data<float>()[i]) same = false;
    }
  });
  std::this_thread::sleep_for(20ms);
  ASSERT_EQ(kill(getpid(), SIGTERM), 0);  // process-directed, as Kubernetes and launchers send it
  EXPECT_TRUE(wait_until(signals.requested(), 5s));
  EXPECT_EQ(signals.signal(), SIGTERM);
  done = true;
  compute.join();
  EXPECT_TRUE(inherited);
  EXPECT_TRUE(same);
}

TEST(StopSignals, ASecondSignalEndsTheProcessAtOnce) {
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    StopSignals signals;
    kill(getpid(), SIGINT);
    if (!wait_until(signals.requested(), 5s)) _exit(3);
    kill(getpid(), SIGTERM);
    std::this_thread::sleep_for(5s);
    _exit(4);  // not reached: the second signal exits
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
}

// The failure StopSignals prevents, shown directly: a signal handler running on a thread that
// is inside oneDNN's JIT f32 GEMM (on CPUs where that kernel is chosen: AVX2, AVX-512). Not run
// by default, since the expected outcome is a crash; run it with
//   build/tests/shoal_unit_tests --gtest_also_run_disabled_tests --gtest_filter='*HandlerOnAComputeThread*'
// On the 2-core build machine (AMD EPYC, AVX-512) it aborts with glibc heap-corruption errors.
extern "C" void count_signal(int) {}

TEST(StopSignals, DISABLED_HandlerOnAComputeThreadCorruptsTheHeap) {
  struct sigaction sa {};
  sa.sa_handler = count_signal;
  sigaction(SIGUSR1, &sa, nullptr);
  std::atomic<bool> done{false};
  std::thread compute([&] {
    auto backend = make_backend(BackendOptions{Device::cpu(), 1});
    Tensor x = backend->allocate(Shape{64, 784}), w = backend->allocate(Shape{256, 784});
    Tensor y = backend->allocate(Shape{64, 256});
    while (!done) {
      backend->linear_forward(x, w, nullptr, y);
      std::vector<char> churn(4096);  // keep the heap busy so corruption is noticed
    }
  });
  for (int i = 0; i < 200000; ++i) {
    pthread_kill(compute.native_handle(), SIGUSR1);
    std::this_thread::sleep_for(10us);
  }
  done = true;
  compute.join();
}

}  // namespace
}  // namespace shoal
