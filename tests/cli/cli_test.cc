// The real `shoal` binary as a process: a short training run, reproducibility, exit codes and
// messages for bad input, and the docs' settings table kept in sync with the registry.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using testing::free_port;
using testing::json_number;
using testing::lines_with;
using testing::read_file;
using testing::run;
using testing::TempDir;
using testing::write_file;

const std::string kShoal = SHOAL_BINARY;

std::vector<std::string> small_job(const TempDir& dir, const std::string& model) {
  return {kShoal,
          "train",
          std::string(SHOAL_SOURCE_DIR) + "/examples/fashion_mnist_cnn.ini",
          "--model=" + model,
          "--train.epochs=2",
          "--data.train_limit=4000",
          "--data.test_limit=1000",
          "--progress=lines",
          "--metrics.file=" + dir.file("metrics.jsonl"),
          "--threads=2"};
}

TEST(Cli, TrainsAndWritesMetrics) {
  TempDir dir;
  auto r = run(small_job(dir, "mlp"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("effective configuration"), std::string::npos);
  EXPECT_NE(r.output.find("total: 235,146 parameters in 6 tensors"), std::string::npos) << "model summary printed";
  EXPECT_NE(r.output.find("final test accuracy"), std::string::npos);
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 2u);
  double loss = json_number(epochs[1], "train_loss");
  EXPECT_GT(loss, 0);
  EXPECT_LT(loss, 0.8) << epochs[1];
  EXPECT_GT(json_number(epochs[1], "test_accuracy"), 0.7) << epochs[1];
}

TEST(Cli, SameSeedGivesTheSameMetrics) {
  TempDir a, b;
  ASSERT_EQ(run(small_job(a, "cnn")).exit_code, 0);
  ASSERT_EQ(run(small_job(b, "cnn")).exit_code, 0);
  auto ea = lines_with(read_file(a.file("metrics.jsonl")), "\"event\": \"epoch\"");
  auto eb = lines_with(read_file(b.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(ea.size(), 2u);
  ASSERT_EQ(eb.size(), 2u);
  for (const char* key : {"train_loss", "train_accuracy", "test_loss", "test_accuracy"})
    EXPECT_EQ(json_number(ea[1], key), json_number(eb[1], key)) << key;
}

struct BadRun {
  const char* name;
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  int exit_code;
  std::string message;
};

TEST(Cli, BadInputGivesOneLineErrorAndDocumentedExitCode) {
  TempDir dir;
  write_file(dir.file("bad.ini"), "[train]\nepochs = 3\nlearning_rate = 0.1\n");
  write_file(dir.file("train-images-idx3-ubyte"), std::string("\0\0\x08\x03", 4));  // truncated header
  write_file(dir.file("train-labels-idx1-ubyte"), "");
  std::vector<BadRun> cases = {
      {"unknown key in job file", {"train", dir.file("bad.ini")}, {}, 2, "unknown key 'train.learning_rate'"},
      {"out of range option", {"train", "--train.batch_size=0"}, {}, 2, "train.batch_size = 0 is out of range"},
      {"a typo of a setting in the environment",
       {"train"},
       {{"SHOAL_TRAIN_BATCH_SIZ", "3"}},
       2,
       "did you mean SHOAL_TRAIN_BATCH_SIZE?"},
      {"unknown command", {"trian"}, {}, 2, "unknown command 'trian'"},
      {"missing data", {"train", "--data.dir=/nonexistent"}, {}, 3, "not found in '/nonexistent'"},
      {"corrupt data", {"train", "--data.dir=" + dir.path()}, {}, 3, "truncated IDX header"},
      // No GPU visible, also on a machine that has one.
      {"cuda unavailable",
       {"train", "--device=cuda", "--train.epochs=1"},
       {{"CUDA_VISIBLE_DEVICES", ""}},
       7,
       "device = cuda"},
      // A local job whose workers cannot run stops at once with their code (not the
      // coordinator's start-up timeout, 6).
      {"cuda unavailable in a local job",
       {"launch", "--local", "--device=cuda", "--cluster.startup_timeout_seconds=50"},
       {{"CUDA_VISIBLE_DEVICES", ""}},
       7,
       "cannot run (device unavailable)"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv{kShoal};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto r = run(argv, c.env, std::chrono::seconds(60));
    EXPECT_EQ(r.exit_code, c.exit_code) << c.name << "\n" << r.output;
    EXPECT_NE(r.output.find("shoal: error: "), std::string::npos) << c.name << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.name << "\n" << r.output;
  }
}

TEST(Cli, HelpDocumentsEveryOption) {
  auto general = run({kShoal, "--help"});
  auto train = run({kShoal, "train", "--help"});
  EXPECT_EQ(general.exit_code, 0);
  EXPECT_EQ(train.exit_code, 0);
  for (const char* key : {"--model", "--train.batch_size", "--optimizer.lr", "--lr.schedule", "--threads", "--device",
                          "--metrics.file", "--data.dir"}) {
    EXPECT_NE(general.output.find(key), std::string::npos) << key;
    EXPECT_NE(train.output.find(key), std::string::npos) << key;
  }
}

TEST(Cli, ConfigurationDocsMatchTheRegistry) {
  auto table = run({kShoal, "config", "--markdown"});
  ASSERT_EQ(table.exit_code, 0);
  std::string docs = read_file(std::string(SHOAL_SOURCE_DIR) + "/docs/configuration.md");
  EXPECT_NE(docs.find(table.output), std::string::npos)
      << "docs/configuration.md is out of date; regenerate its table with `shoal config --markdown`";
}

TEST(Cli, ExampleJobFilesAreValid) {
  for (const auto& entry : std::filesystem::directory_iterator(std::string(SHOAL_SOURCE_DIR) + "/examples")) {
    if (entry.path().extension() != ".ini") continue;
    auto r = run({kShoal, "config", entry.path().string()});
    EXPECT_EQ(r.exit_code, 0) << entry.path() << "\n" << r.output;
  }
}

// threads = 0 in a real cgroup with a CPU quota of half a CPU: `shoal version` inside it counts
// one CPU and names the quota's file (tests/base/cpus_test.cc has the table of file forms).
TEST(Cli, ThreadsFollowTheCgroupCpuQuota) {
  namespace fs = std::filesystem;
  const std::string name = "shoal-test-" + std::to_string(getpid());
  std::string dir, why;
  auto write = [](const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    out.flush();
    return static_cast<bool>(out);
  };
  std::error_code ec;
  if (fs::exists("/sys/fs/cgroup/cgroup.controllers", ec)) {  // cgroup v2
    dir = "/sys/fs/cgroup/" + name;
    if (!fs::create_directory(dir, ec) || !write(dir + "/cpu.max", "50000 100000"))
      why = "cannot create a v2 cgroup with cpu.max at " + dir + " (not root, or the cpu controller is not delegated)";
  } else {
    std::string mount;
    for (const char* m : {"/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"})
      if (fs::exists(std::string(m) + "/cpu.cfs_quota_us", ec)) mount = m;
    dir = mount + "/" + name;
    if (mount.empty())
      why = "no cgroup v1 cpu controller is mounted";
    else if (!fs::create_directory(dir, ec) || !write(dir + "/cpu.cfs_period_us", "100000") ||
             !write(dir + "/cpu.cfs_quota_us", "50000"))
      why = "cannot create a v1 cgroup with a CFS quota at " + dir + " (not root?)";
  }
  if (!why.empty()) {
    fs::remove(dir, ec);
    GTEST_SKIP() << why;
  }
  auto r = run({"/bin/sh", "-c", "echo $$ > " + dir + "/cgroup.procs && exec " + kShoal + " version"});
  fs::remove(dir, ec);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("CPUs: 1 for threads = 0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cgroup quota 0.5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(name), std::string::npos) << r.output;
}

}  // namespace
}  // namespace shoal

namespace shoal {
namespace {

// Accuracy on the real Fashion-MNIST test set with the shipped example job files. The full
// 10-epoch promise is checked on the main job (Accuracy.AsyncCnnTwoServersTwoWorkers...); these
// run the same files for fewer epochs (the cosine schedule then decays over those) against a
// bound calibrated on that shorter run.
double final_accuracy(const std::string& job, const std::string& epochs = "10") {
  TempDir dir;
  auto r = run({kShoal, "train", std::string(SHOAL_SOURCE_DIR) + "/examples/" + job, "--progress=off",
                "--train.epochs=" + epochs, "--metrics.file=" + dir.file("m.jsonl")},
               {}, std::chrono::minutes(10));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto end = lines_with(read_file(dir.file("m.jsonl")), "\"event\": \"end\"");
  EXPECT_EQ(end.size(), 1u) << r.output;
  return end.empty() ? 0 : json_number(end[0], "final_test_accuracy");
}

TEST(Accuracy, MlpReaches88PercentIn10Epochs) { EXPECT_GE(final_accuracy("fashion_mnist_mlp.ini"), 0.88); }

// 2 epochs: 91.38 % here (2026-12, 20 s; 10 epochs reach 91 % and more, 105 s).
TEST(Accuracy, CnnReaches90PercentIn2Epochs) { EXPECT_GE(final_accuracy("fashion_mnist_cnn.ini", "2"), 0.90); }

}  // namespace
}  // namespace shoal
