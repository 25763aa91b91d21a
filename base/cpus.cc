#include "base/cpus.h"

#include <sched.h>

#include <cmath>
#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>
#include <vector>

namespace shoal {
namespace {

std::optional<std::string> read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

// A cgroup path and each of its ancestors: "/a/b" -> "/a/b", "/a", "".
std::vector<std::string> with_ancestors(std::string path) {
  std::vector<std::string> out;
  while (!path.empty() && path.back() == '/') path.pop_back();
  for (;;) {
    out.push_back(path);
    if (path.empty()) break;
    const auto slash = path.rfind('/');
    path = slash == std::string::npos ? "" : path.substr(0, slash);
  }
  return out;
}

void consider(double cpus, const std::string& file, std::optional<double>* best, std::string* from) {
  if (!(cpus > 0) || !std::isfinite(cpus)) return;
  if (!*best || cpus < **best) {
    *best = cpus;
    *from = file;
  }
}

}  // namespace

std::optional<double> cgroup_cpu_quota(const std::string& proc_self_cgroup, const std::string& root,
                                       std::string* from) {
  std::optional<double> best;
  std::string source;
  std::istringstream lines(proc_self_cgroup);
  std::string line;
  while (std::getline(lines, line)) {
    // "<id>:<controllers>:<path>"; v2 is "0::<path>".
    const auto a = line.find(':');
    const auto b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (controllers.empty()) {
      // v2: cpu.max holds "<quota> <period>" or "max <period>"; the unified mount is the root
      // itself on v2-only hosts, root/unified on hybrid ones.
      for (const std::string mount : {root, root + "/unified"})
        for (const std::string& dir : with_ancestors(path)) {
          const std::string file = mount + dir + "/cpu.max";
          const auto text = read_first_line(file);
          if (!text) continue;
          std::istringstream in(*text);
          std::string quota;
          double period = 0;
          if (in >> quota >> period && quota != "max" && period > 0) {
            try {
              consider(std::stod(quota) / period, file, &best, &source);
            } catch (const std::logic_error&) {
            }
          }
        }
      continue;
    }
    bool cpu = false;
    std::istringstream names(controllers);
    std::string name;
    while (std::getline(names, name, ','))
      if (name == "cpu") cpu = true;
    if (!cpu) continue;
    for (const std::string mount : {root + "/" + controllers, root + "/cpu", root + "/cpu,cpuacct"})
      for (const std::string& dir : with_ancestors(path)) {
        const auto quota = read_first_line(mount + dir + "/cpu.cfs_quota_us");
        const auto period = read_first_line(mount + dir + "/cpu.cfs_period_us");
        if (!quota || !period) continue;
        try {
          const double q = std::stod(*quota), p = std::stod(*period);
          if (q > 0 && p > 0) consider(q / p, mount + dir + "/cpu.cfs_quota_us", &best, &source);
        } catch (const std::logic_error&) {
        }
      }
  }
  if (best && from) *from = source;
  return best;
}

CpuBudget cpu_budget() {
  CpuBudget b;
  cpu_set_t set;
  CPU_ZERO(&set);
  b.affinity = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                           : static_cast<int>(std::thread::hardware_concurrency());
  b.affinity = std::max(1, b.affinity);
  std::ifstream in("/proc/self/cgroup");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  b.quota = cgroup_cpu_quota(text, "/sys/fs/cgroup", &b.quota_from);
  b.usable = b.affinity;
  if (b.quota) b.usable = std::min(b.usable, std::max(1, static_cast<int>(std::ceil(*b.quota - 1e-9))));
  return b;
}

int usable_cpus() { return cpu_budget().usable; }

}  // namespace shoal
