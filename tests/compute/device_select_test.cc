// Which device a process picks (compute/devices/device_select.h): a table over the setting, the local
// rank its launcher gave it, the GPUs it sees and whether this build has CUDA; and the
// environment variables it reads, checked.
#include "compute/devices/device_select.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <optional>
#include <string>

#include "base/environment.h"
#include "base/error.h"
#include "compute/devices/mig.h"
#include "config/config.h"
#include "worker/sync_world.h"

namespace shoal {
namespace {

struct Row {
  std::string setting;
  std::optional<int> local_rank;
  int gpus;
  bool built;
  std::string expect;  // "cpu", "cuda:N", or the error's kind: "DeviceError" / "ConfigError"
  std::string why_has;
};

std::string outcome(const Row& r, std::string* why) {
  std::optional<LocalRank> lr;
  if (r.local_rank) lr = LocalRank{*r.local_rank, "TEST_LOCAL_RANK"};
  try {
    DeviceChoice c = choose_device(r.setting, lr, r.gpus, r.built);
    *why = c.why;
    return c.device.kind == DeviceKind::cpu ? "cpu" : "cuda:" + std::to_string(c.device.index);
  } catch (const DeviceError& e) {
    *why = e.what();
    return "DeviceError";
  } catch (const ConfigError& e) {
    *why = e.what();
    return "ConfigError";
  }
}

TEST(DeviceSelect, Table) {
  const Row rows[] = {
      {"cpu", 3, 8, true, "cpu", "device = cpu"},
      {"auto", std::nullopt, 0, true, "cpu", "no CUDA GPU is visible"},
      {"auto", std::nullopt, 4, false, "cpu", "built without CUDA"},
      {"auto", std::nullopt, 4, true, "cuda:0", "no local rank set"},
      {"auto", 2, 4, true, "cuda:2", "local rank 2 from TEST_LOCAL_RANK"},
      {"cuda", 5, 4, true, "cuda:1", "GPUs are shared"},
      {"cuda", 3, 1, true, "cuda:0", "GPU 0 of 1"},  // a pod given one GPU sees only it
      {"cuda", 0, 0, true, "DeviceError", "no CUDA GPU is visible"},
      {"cuda", 0, 2, false, "DeviceError", "built without CUDA"},
      {"gpu", 0, 2, true, "ConfigError", "'gpu' is not one of auto, cpu, cuda"},
  };
  for (const Row& r : rows) {
    std::string why;
    EXPECT_EQ(outcome(r, &why), r.expect) << r.setting << " rank " << r.local_rank.value_or(-1) << " gpus " << r.gpus;
    EXPECT_NE(why.find(r.why_has), std::string::npos) << "why: " << why << "; expected it to say: " << r.why_has;
  }
}

class LocalRankEnvironment : public ::testing::Test {
 protected:
  void SetUp() override { clear(); }
  void TearDown() override { clear(); }
  static void clear() {
    for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK"}) unsetenv(name);
  }
};

TEST_F(LocalRankEnvironment, ConfiguredThenOpenMpiThenTorchrunStyle) {
  EXPECT_FALSE(local_rank_of(-1).has_value());
  setenv("LOCAL_RANK", "3", 1);
  EXPECT_EQ(local_rank_of(-1)->rank, 3);
  EXPECT_EQ(local_rank_of(-1)->source, "LOCAL_RANK");
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  EXPECT_EQ(local_rank_of(-1)->rank, 1);
  EXPECT_EQ(local_rank_of(-1)->source, "OMPI_COMM_WORLD_LOCAL_RANK");
  EXPECT_EQ(local_rank_of(2)->rank, 2);
  EXPECT_EQ(local_rank_of(2)->source, "node.local_rank");
}

TEST_F(LocalRankEnvironment, AMalformedValueIsAConfigErrorNamingTheVariable) {
  for (const char* bad : {"", "x", "1x", "-1", "99999999999"}) {
    setenv("LOCAL_RANK", bad, 1);
    try {
      local_rank_of(-1);
      ADD_FAILURE() << "accepted LOCAL_RANK='" << bad << "'";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("LOCAL_RANK"), std::string::npos) << e.what();
    }
  }
}

// GKE's device plugin names no MIG-<uuid> in the environment: the driver (NVML, loaded at run
// time) says whether a GPU is in MIG mode and which instance this process reaches. A stand-in
// for libnvidia-ml.so.1 answers as FAKE_NVML says; every successful init is shut down again.
TEST(Mig, NvmlSaysWhetherAGpuIsInMigModeAndWhichInstanceThisProcessReaches) {
  void* keep = dlopen(SHOAL_FAKE_NVML, RTLD_NOW | RTLD_LOCAL);  // keeps its counters loaded
  ASSERT_NE(keep, nullptr) << dlerror();
  auto calls = reinterpret_cast<int (*)()>(dlsym(keep, "fake_nvml_calls"));
  auto open_inits = reinterpret_cast<int (*)()>(dlsym(keep, "fake_nvml_open_inits"));
  ASSERT_TRUE(calls != nullptr && open_inits != nullptr);
  setenv("FAKE_NVML", "mig", 1);
  auto slice = mig_slice_from_nvml(SHOAL_FAKE_NVML);
  ASSERT_TRUE(slice.has_value());
  EXPECT_EQ(slice->id, "MIG-0c3a7e1f-1111-2222-3333-444455556666");
  EXPECT_EQ(slice->name, "NVIDIA H100 80GB HBM3 MIG 1g.10gb");
  EXPECT_EQ(slice->how, "NVML: GPU 0 (NVIDIA H100 80GB HBM3) is in MIG mode");
  EXPECT_EQ(open_inits(), 0);
  setenv("FAKE_NVML", "whole", 1);
  EXPECT_FALSE(mig_slice_from_nvml(SHOAL_FAKE_NVML).has_value());
  setenv("FAKE_NVML", "no-init", 1);
  EXPECT_FALSE(mig_slice_from_nvml(SHOAL_FAKE_NVML).has_value());
  EXPECT_EQ(open_inits(), 0);
  EXPECT_GE(calls(), 10);
  // No driver (this machine, a CPU node): no MIG, no error.
  EXPECT_FALSE(mig_slice_from_nvml("/nonexistent/libnvidia-ml.so.1").has_value());
  unsetenv("FAKE_NVML");
  dlclose(keep);
}

// A MIG slice is how the NVIDIA device plugin (and GKE's gpu-partition-size) hands a container
// part of a GPU: NVIDIA_VISIBLE_DEVICES=MIG-<uuid>. A sync job on one is refused, saying why
// (NCCL cannot all-reduce between MIG instances); an async job, or whole GPUs, are not.
TEST(Mig, SliceFromTheEnvironmentAndASyncJobOnOneIsRefused) {
  EXPECT_FALSE(mig_device(nullptr, nullptr));
  EXPECT_FALSE(mig_device("GPU-5f2c1d4e-aaaa-bbbb-cccc-0123456789ab", "0"));
  EXPECT_FALSE(mig_device("all", nullptr));
  EXPECT_EQ(*mig_device("MIG-0c3a7e1f-1111-2222-3333-444455556666", nullptr),
            "MIG-0c3a7e1f-1111-2222-3333-444455556666");
  EXPECT_EQ(*mig_device("GPU-1, MIG-abc", nullptr), "MIG-abc");
  EXPECT_EQ(*mig_device(nullptr, "MIG-def"), "MIG-def");

  JobConfig sync;
  sync.strategy = StrategyKind::sync;
  sync.node_rank = 0;
  setenv("NVIDIA_VISIBLE_DEVICES", "MIG-0c3a7e1f-1111-2222-3333-444455556666", 1);
  try {
    resolve_sync_setup(sync, /*cuda_device=*/true);
    ADD_FAILURE() << "a sync job on a MIG slice was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("MIG-0c3a7e1f"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("strategy = async"), std::string::npos) << e.what();
  }
  // On the CPU the slice is irrelevant (a sync job over Gloo on the host).
  EXPECT_NO_THROW(resolve_sync_setup(sync, /*cuda_device=*/false));
  unsetenv("NVIDIA_VISIBLE_DEVICES");
}

// A StatefulSet names its pods NAME-0, NAME-1, ...: node.rank_from_hostname takes the ordinal.
TEST(HostnameOrdinal, TheDigitsAfterTheLastDashOfThePodsOwnName) {
  EXPECT_EQ(hostname_ordinal("shoal-ps-3"), 3);
  EXPECT_EQ(hostname_ordinal("shoal-worker-12"), 12);
  EXPECT_EQ(hostname_ordinal("shoal-worker-0.shoal-worker.default.svc.cluster.local"), 0);
  EXPECT_EQ(hostname_ordinal("my-job-7-ps-2"), 2);
  for (const char* none : {"vm", "shoal-ps", "shoal-ps-", "shoal-ps-x1", "shoal-ps-12345678", "host.example-3.com", ""})
    EXPECT_FALSE(hostname_ordinal(none).has_value()) << none;
}

}  // namespace
}  // namespace shoal
