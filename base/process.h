// Process-wide settings a Shoal binary makes once in main(), never from library code.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

namespace shoal {

// Keeps large freed blocks in the heap instead of returning them to the kernel. Every push and
// pull allocates megabyte-sized ZeroMQ frames; with glibc's defaults each one is a fresh mmap
// whose pages fault in on first touch, which halved parameter-server bandwidth (measured with
// bench/ps_bandwidth.cc: 1 server 26% -> 61% of loopback TCP). Costs: up to 512 MiB of freed
// memory may stay mapped to the process.
void tune_allocator();

// This process's peak resident set (VmHWM), in bytes; 0 where /proc cannot say.
std::int64_t peak_rss_bytes();

// A TCP port on 127.0.0.1 that was free a moment ago, for a process started next to listen on
// (`shoal launch --local`'s coordinator; tests). Drawn at random below the kernel's ephemeral
// range (net.ipv4.ip_local_port_range): a port in that range, even one just found free, may be
// taken meanwhile by the local end of any outgoing connection, including a member's connect to
// that very port, which on loopback can connect to itself (a TCP self-connect) and keep it.
int free_loopback_port();

// Turns SIGTERM and SIGINT (pod eviction, preemption, a launcher stopping the job, Ctrl-C)
// into a request to stop: requested() becomes true and the role finishes its step, leaves the
// job cleanly and exits 0. A second signal ends the process at once (exit 128 + signal).
//
// No signal handler ever runs on a compute thread. The signals are blocked in the thread that
// constructs this (before it starts any other: threads inherit the mask) and received by a
// thread of its own with sigtimedwait. A handler is not enough: oneDNN's JIT f32 GEMM kernels
// (Debian's 2.6, fixed upstream only in 3.11.2) point the stack pointer into a heap buffer
// while they run, so a signal delivered to that thread writes its frame into the heap — the
// heap corruption behind a worker crashing on SIGTERM (docs/async-training.md).
class StopSignals {
 public:
  StopSignals();
  ~StopSignals();  // stops the receiving thread; the signals stay blocked
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  const std::atomic<bool>& requested() const { return requested_; }
  int signal() const { return signal_; }  // the first signal received, 0 if none

 private:
  void receive();

  std::atomic<bool> requested_{false}, quit_{false};
  std::atomic<int> signal_{0};
  std::thread thread_;
};

// For a child process after fork(), before exec(): no signal blocked, so the program it runs
// starts as a fresh process would.
void unblock_all_signals();
// SIGINT and SIGTERM unblocked: their default action (the `shoal` entry, launch/entry.cc,
// starts the program with them blocked; the commands that do not stop on request take them
// as any program does).
void unblock_stop_signals();

}  // namespace shoal
