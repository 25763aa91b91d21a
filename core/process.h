// Process-wide settings a Shoal binary makes once in main(), never from library code.
#pragma once

namespace shoal {

// Keeps large freed blocks in the heap instead of returning them to the kernel. Every push and
// pull allocates megabyte-sized ZeroMQ frames; with glibc's defaults each one is a fresh mmap
// whose pages fault in on first touch, which halved parameter-server bandwidth (measured with
// bench/ps_bandwidth.cc: 1 server 26% -> 61% of loopback TCP). Costs: up to 512 MiB of freed
// memory may stay mapped to the process.
void tune_allocator();

}  // namespace shoal
