// The CUDA parts are a module (libshoal_cuda.so) that the binary loads only in a process that
// computes on a GPU: CPU processes never map a CUDA library, and a GPU process that cannot load
// it ends with exit 7 and one line naming what is missing. Real processes of the real binary.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using testing::read_file;
using testing::run;
using testing::Subprocess;
using testing::TempDir;

const std::string kShoal = SHOAL_BINARY;
const std::string kJob = std::string(SHOAL_SOURCE_DIR) + "/examples/fashion_mnist_mlp.ini";

std::string last_line(const std::string& text) {
  auto end = text.find_last_not_of('\n');
  if (end == std::string::npos) return "";
  auto begin = text.rfind('\n', end);
  return text.substr(begin == std::string::npos ? 0 : begin + 1, end - (begin == std::string::npos ? 0 : begin + 1) + 1);
}

// The libraries a running process has mapped (its /proc/PID/maps), one path per line.
std::string mapped_libraries(pid_t pid) { return read_file("/proc/" + std::to_string(pid) + "/maps"); }

TEST(CudaModule, CpuProcessesMapNoCudaLibrary) {
  // A coordinator and a CPU worker's `train` stay up long enough to be looked at.
  Subprocess coordinator({kShoal, "coordinator", kJob, "--cluster.coordinator=tcp://127.0.0.1:" +
                                                          std::to_string(testing::free_port())});
  Subprocess trainer({kShoal, "train", kJob, "--device=auto", "--train.epochs=50", "--progress=lines"});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (trainer.output().find("epoch 1") == std::string::npos && trainer.running() &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(trainer.running()) << trainer.output();
  ASSERT_TRUE(coordinator.running()) << coordinator.output();
  for (pid_t pid : {coordinator.pid(), trainer.pid()}) {
    const std::string maps = mapped_libraries(pid);
    for (const char* lib : {"libshoal_cuda", "libcudart", "libcublas", "libcudnn", "libnccl", "libcuda.so"})
      EXPECT_EQ(maps.find(lib), std::string::npos) << "pid " << pid << " mapped " << lib;
    EXPECT_NE(maps.find("libdnnl"), std::string::npos) << "the maps of pid " << pid << " were not read";
  }
  trainer.signal(SIGTERM);
  coordinator.signal(SIGTERM);
  trainer.wait(std::chrono::seconds(30));
  coordinator.wait(std::chrono::seconds(30));
}

#ifdef SHOAL_BROKEN_CUDA_MODULE
TEST(CudaModule, AMissingCudaLibraryIsExitSevenNamingIt) {
  // The binary and a module that needs a library this host lacks (a stand-in for cuDNN), as an
  // image built without cuDNN would have them.
  TempDir dir;
  // The entry and the program it runs (launch/entry.cc), as an image installs them.
  for (const char* name : {"shoal", "shoal-main"}) {
    std::filesystem::copy_file(std::filesystem::path(kShoal).parent_path() / name, dir.file(name));
    std::filesystem::permissions(dir.file(name), std::filesystem::perms::owner_exec,
                                 std::filesystem::perm_options::add);
  }
  std::filesystem::copy_file(SHOAL_BROKEN_CUDA_MODULE, dir.file("libshoal_cuda.so"));
  auto r = run({dir.file("shoal"), "train", kJob, "--device=cuda", "--train.epochs=1"});
  EXPECT_EQ(r.exit_code, 7) << r.output;
  const std::string line = last_line(r.output);
  EXPECT_EQ(line.rfind("shoal: error: device = cuda, but the CUDA module ", 0), 0u) << line;
  EXPECT_NE(line.find(dir.file("libshoal_cuda.so") + " cannot be loaded: libshoal_test_stand_in.so: cannot open shared "
                                                     "object file"),
            std::string::npos)
      << line;
  // The same binary and module on the CPU: the module is never loaded, so nothing is missing.
  auto version = run({dir.file("shoal"), "version"});
  EXPECT_EQ(version.exit_code, 0) << version.output;
  auto cpu = run({dir.file("shoal"), "train", kJob, "--device=cpu", "--train.epochs=1", "--data.train_limit=640",
                  "--data.test_limit=100", "--progress=off"});
  EXPECT_EQ(cpu.exit_code, 0) << cpu.output;
}
#endif

}  // namespace
}  // namespace shoal
