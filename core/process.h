// Process-wide settings a Shoal binary makes once in main(), never from library code.
#pragma once

#include <atomic>

namespace shoal {

// Keeps large freed blocks in the heap instead of returning them to the kernel. Every push and
// pull allocates megabyte-sized ZeroMQ frames; with glibc's defaults each one is a fresh mmap
// whose pages fault in on first touch, which halved parameter-server bandwidth (measured with
// bench/ps_bandwidth.cc: 1 server 26% -> 61% of loopback TCP). Costs: up to 512 MiB of freed
// memory may stay mapped to the process.
void tune_allocator();

// Turns SIGTERM (pod eviction, preemption, a launcher stopping the job) into a request to
// stop: the returned flag becomes true and the role finishes its step, leaves the job
// cleanly and exits 0. Call once, from main, for roles that can leave gracefully.
const std::atomic<bool>& install_termination_request();

}  // namespace shoal
