// Whole jobs on the GPU with the real `shoal` binary: an asynchronous parameter-server job with
// two GPU workers, and sync jobs over NCCL. They skip, saying why, where no GPU is visible. The
// tests at the end run everywhere: what `shoal version` says about GPUs, and the exit code of
// the worker roles when device = cuda cannot be had (`shoal train` is covered in
// tests/cli/cli_test.cc).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "compute/backend.h"
#include "compute/devices/devices.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::free_port;
using testing::json_number;
using testing::lines_with;
using testing::read_file;
using testing::TempDir;

// The binary and the source tree this was built with, unless GPU_TEST_SHOAL_BINARY and
// GPU_TEST_SOURCE_DIR say where they are now (bench/gpu.sh, on a GPU machine the build was
// copied to). Not SHOAL_*: the shoal processes inherit the environment and take every SHOAL_*
// variable as a setting.
std::string from_env(const char* name, const char* built_in) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : built_in;
}
const std::string kShoal = from_env("GPU_TEST_SHOAL_BINARY", SHOAL_BINARY);
const std::string kSource = from_env("GPU_TEST_SOURCE_DIR", SHOAL_SOURCE_DIR);
const std::string kAsyncJob = kSource + "/examples/fashion_mnist_async.ini";
const std::string kSyncJob = kSource + "/examples/fashion_mnist_sync.ini";

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

double final_accuracy(const TempDir& dir) {
  auto end = lines_with(read_file(dir.file("m.jsonl")), "\"event\": \"end\"");
  return end.size() == 1 ? json_number(end[0], "final_test_accuracy") : -1;
}

// The data directory comes from the job file, or from SHOAL_DATA_DIR (shoal's variable for
// data.dir), which the processes inherit.
class GpuJob : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_built())
      GTEST_SKIP() << "this shoal was built without CUDA (" << describe_gpus() << "): GPU test not run";
    if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA GPU visible (" << describe_gpus() << "): GPU test not run";
  }
};

TEST_F(GpuJob, AsyncParameterServerJobWithTwoGpuWorkers) {
  TempDir dir;
  auto r = testing::run({kShoal, "launch", kAsyncJob, "--local", "--device=cuda", "--model=cnn", "--train.epochs=2",
                         "--data.train_limit=6000", "--data.test_limit=2000", "--data.shard_size=500",
                         "--metrics.file=" + dir.file("m.jsonl")},
                        {}, 5min);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("final test accuracy"), std::string::npos) << r.output;
  // Both workers computed on a GPU (the device choice each logs, compute/devices/device_select.cc).
  EXPECT_GE(count_of(r.output, "device = cuda: GPU"), 2u) << r.output;
  EXPECT_GT(final_accuracy(dir), 0.7) << r.output;
  auto epochs = lines_with(read_file(dir.file("m.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 2u) << r.output;
  EXPECT_LT(json_number(epochs[1], "train_loss"), json_number(epochs[0], "train_loss"));
  EXPECT_EQ(json_number(epochs[1], "samples_done"), 6000);
}

std::vector<std::string> nccl_job(int ranks, const TempDir& dir) {
  return {kShoal,
          "launch",
          kSyncJob,
          "--local",
          "--device=cuda",
          "--sync.backend=nccl",
          "--cluster.workers=" + std::to_string(ranks),
          "--train.epochs=1",
          "--data.train_limit=4096",
          "--data.test_limit=1000",
          "--metrics.file=" + dir.file("m.jsonl")};
}

TEST_F(GpuJob, OneRankSyncJobOverNccl) {
  TempDir dir;
  auto r = testing::run(nccl_job(1, dir), {}, 5min);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("all-reduce over nccl"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("final test accuracy"), std::string::npos) << r.output;
  EXPECT_GT(final_accuracy(dir), 0.6) << r.output;
}

// NCCL needs one GPU per rank (two ranks on one device is an error in NCCL itself).
TEST_F(GpuJob, TwoRankSyncJobOverNcclOnTwoGpus) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs 2 GPUs, " << cuda_device_count() << " visible";
  TempDir dir;
  auto r = testing::run(nccl_job(2, dir), {}, 5min);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("all-reduce over nccl"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("GPU 1"), std::string::npos) << "rank 1 on the second GPU\n" << r.output;
  EXPECT_GT(final_accuracy(dir), 0.6) << r.output;
}

// ---- everywhere ------------------------------------------------------------------------------

TEST(GpuVersion, VersionPrintsTheGpusOrWhyThereAreNone) {
  auto r = testing::run({kShoal, "version"}, {}, 1min);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("shoal "), std::string::npos) << r.output;
  if (!cuda_built()) {
    EXPECT_NE(r.output.find("CUDA support: not built"), std::string::npos) << r.output;
    return;
  }
  // What the module was built with is said without loading it; the GPUs only where a driver is.
  EXPECT_NE(r.output.find("CUDA support: the module libshoal_cuda.so"), std::string::npos) << r.output;
  const int gpus = cuda_device_count();
  if (gpus == 0) {
    EXPECT_NE(r.output.find("no GPUs"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("GPU 0:"), std::string::npos) << r.output;
  } else {
    EXPECT_NE(r.output.find("CUDA runtime"), std::string::npos) << r.output;
    for (int i = 0; i < gpus; ++i)
      EXPECT_NE(r.output.find("GPU " + std::to_string(i) + ": "), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("GPU " + std::to_string(gpus) + ": "), std::string::npos) << r.output;
  }
}

// The worker roles load their device before they join a job, so each fails at once with the
// device code (7) and a line naming cuda, with no coordinator to talk to.
TEST(GpuUnavailable, WorkerRolesWithDeviceCudaExitWithTheDeviceCode) {
  if (cuda_device_count() > 0)
    GTEST_SKIP() << "a GPU is visible (" << describe_gpus() << "): this test is for machines without one";
  const std::string nobody = "--cluster.coordinator=tcp://127.0.0.1:" + std::to_string(free_port());
  struct Case {
    const char* name;
    std::vector<std::string> argv;
  } cases[] = {
      {"async worker",
       {kShoal, "worker", kAsyncJob, "--device=cuda", nobody, "--node.rank=0", "--data.train_limit=500",
        "--data.test_limit=100", "--cluster.startup_timeout_seconds=5"}},
      {"sync worker",
       {kShoal, "worker", kSyncJob, "--device=cuda", "--sync.backend=gloo", "--cluster.workers=1", nobody,
        "--node.rank=0", "--data.train_limit=500", "--data.test_limit=100", "--cluster.startup_timeout_seconds=5"}},
  };
  for (const auto& c : cases) {
    auto r = testing::run(c.argv, {}, 1min);
    EXPECT_EQ(r.exit_code, 7) << c.name << "\n" << r.output;
    EXPECT_NE(r.output.find("shoal: error: "), std::string::npos) << c.name << "\n" << r.output;
    EXPECT_NE(r.output.find("device = cuda"), std::string::npos) << c.name << "\n" << r.output;
  }
}

}  // namespace
}  // namespace shoal
