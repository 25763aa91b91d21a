// How many CPUs this process may use: what `threads = 0` means. The smaller of the affinity mask
// (taskset, a cpuset) and the CPU quota of its cgroup and every cgroup above it (cgroup v2
// `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), a fractional quota rounded up. A
// container limited to 2 CPUs on a 96-core node gets 2 threads, not 96; OpenMP and oneDNN would
// otherwise start one per core and be throttled by the kernel's quota every period.
#pragma once

#include <optional>
#include <string>

namespace shoal {

struct CpuBudget {
  int affinity = 1;             // CPUs in the affinity mask
  std::optional<double> quota;  // CPUs the cgroup quota allows, when there is one
  std::string quota_from;       // the file that set it
  int usable = 1;               // min(affinity, ceil(quota)), at least 1
};

// This process's budget (reads /proc/self/cgroup and the cgroup filesystems once per call).
CpuBudget cpu_budget();
// cpu_budget().usable.
int usable_cpus();

// The quota part alone, for tests: `proc_self_cgroup` is the text of /proc/self/cgroup and
// `root` the directory the cgroup filesystems are mounted under (/sys/fs/cgroup). The smallest
// quota of the process's cgroup and its ancestors, in v2 and v1 hierarchies; nullopt when none
// is set. *from names the file that set it.
std::optional<double> cgroup_cpu_quota(const std::string& proc_self_cgroup, const std::string& root,
                                       std::string* from);

}  // namespace shoal
