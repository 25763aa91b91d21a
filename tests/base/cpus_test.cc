// What `threads = 0` means: the CPU quota of the process's cgroups (v2 and v1, and their
// ancestors) against fake cgroup trees, and the whole path in a real cgroup of the host.
#include "base/cpus.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

namespace shoal {
namespace {

namespace fs = std::filesystem;

class FakeCgroups : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("shoal-cgroups-" + std::to_string(getpid()));
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }
  void put(const std::string& file, const std::string& text) {
    const fs::path p = root_ / file;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text << "\n";
  }
  std::optional<double> quota(const std::string& proc, std::string* from = nullptr) {
    std::string f;
    auto q = cgroup_cpu_quota(proc, root_.string(), &f);
    if (from) *from = f;
    return q;
  }
  fs::path root_;
};

TEST_F(FakeCgroups, V2CpuMaxOfTheCgroupOrAnAncestorTheSmallestWins) {
  put("kubepods/pod1/ctr/cpu.max", "max 100000");
  EXPECT_FALSE(quota("0::/kubepods/pod1/ctr\n"));  // "max": no limit
  put("kubepods/pod1/cpu.max", "250000 100000");
  std::string from;
  EXPECT_DOUBLE_EQ(*quota("0::/kubepods/pod1/ctr\n", &from), 2.5);  // the pod's limit, one level up
  EXPECT_EQ(from, (root_ / "kubepods/pod1/cpu.max").string());
  put("kubepods/pod1/ctr/cpu.max", "50000 100000");
  EXPECT_DOUBLE_EQ(*quota("0::/kubepods/pod1/ctr\n"), 0.5);
  put("cpu.max", "150000 100000");  // a namespaced container sees its own cgroup as the root: "0::/"
  EXPECT_DOUBLE_EQ(*quota("0::/\n"), 1.5);
}

TEST_F(FakeCgroups, V1CfsQuotaUnderTheCpuControllersMount) {
  put("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1");
  put("cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000");
  const std::string proc = "12:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n";
  EXPECT_FALSE(quota(proc));  // -1: unlimited
  put("cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000");
  EXPECT_DOUBLE_EQ(*quota(proc), 3.0);
  // Hybrid hosts: a v2 line beside the v1 ones; both count.
  put("unified/docker/abc/cpu.max", "120000 100000");
  EXPECT_DOUBLE_EQ(*quota(proc + "0::/docker/abc\n"), 1.2);
}

TEST_F(FakeCgroups, GarbageAndMissingFilesMeanNoQuota) {
  for (const char* proc : {"", "garbage", "0::", "::::", "3:cpu:", "0::/nowhere\n5:cpu:/nowhere\n"})
    EXPECT_FALSE(quota(proc)) << proc;
  put("x/cpu.max", "lots 100000");
  EXPECT_FALSE(quota("0::/x\n"));
  put("x/cpu.max", "100000 0");
  EXPECT_FALSE(quota("0::/x\n"));
  put("x/cpu.max", "-5 100000");
  EXPECT_FALSE(quota("0::/x\n"));
}

TEST(CpuBudget, UsableIsTheSmallerOfAffinityAndTheRoundedUpQuota) {
  const CpuBudget b = cpu_budget();
  EXPECT_GE(b.usable, 1);
  EXPECT_LE(b.usable, b.affinity);
  if (b.quota) EXPECT_LE(b.usable, static_cast<int>(std::ceil(*b.quota)));
  EXPECT_EQ(usable_cpus(), b.usable);
}

}  // namespace
}  // namespace shoal
