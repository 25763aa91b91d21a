// Model files in whole jobs, with the real `shoal` binary: the worked example of docs/models.md
// (examples/models/fashion_mixnet.yaml, a model that exists only as a file) trained by `shoal
// train`, by an async job and by a sync job; `shoal model show`; a bad file stops every
// command with exit 2 and one line naming the file and line.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::json_number;
using testing::lines_with;
using testing::read_file;
using testing::TempDir;

const std::string kShoal = SHOAL_BINARY;
const std::string kSource = SHOAL_SOURCE_DIR;
const std::string kExample = kSource + "/examples/models/fashion_mixnet.yaml";

double final_accuracy(const std::string& metrics_file) {
  auto end = lines_with(read_file(metrics_file), "\"event\": \"end\"");
  return end.size() == 1 ? json_number(end[0], "final_test_accuracy") : -1;
}

TEST(ModelFileJobs, TheWorkedExampleTrainsInOneProcessInAnAsyncJobAndInASyncJob) {
  TempDir dir;
  const std::vector<std::string> common{"--model=" + kExample, "--train.epochs=1", "--data.train_limit=4000",
                                        "--data.test_limit=500", "--lr.warmup_epochs=0", "--progress=off"};
  struct Case {
    const char* what;
    std::vector<std::string> argv;
  } cases[] = {
      {"train", {kShoal, "train", kSource + "/examples/fashion_mnist_cnn.ini"}},
      {"async", {kShoal, "launch", kSource + "/examples/fashion_mnist_async.ini", "--local"}},
      {"sync", {kShoal, "launch", kSource + "/examples/fashion_mnist_sync.ini", "--local"}},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string metrics = dir.file(std::string(c.what) + ".jsonl");
    c.argv.insert(c.argv.end(), common.begin(), common.end());
    c.argv.push_back("--metrics.file=" + metrics);
    auto r = testing::run(c.argv, {}, 600s);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const double accuracy = final_accuracy(metrics);
    std::printf("fashion_mixnet, %s, 1 epoch of 4,000 samples: %.2f%%\n", c.what, 100 * accuracy);
    EXPECT_GT(accuracy, 0.35) << r.output;  // chance: 10 %
  }
}

TEST(ModelFileJobs, ModelShowPrintsLayersAndTotals) {
  auto r = testing::run({kShoal, "model", "show", "resnet18", "--input", "3x64x64", "--classes=10"}, {}, 60s);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("model resnet18, input 3x64x64, 10 classes"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("maxpool"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("64x16x16"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("total: 11,181,642 parameters"), std::string::npos) << r.output;
  auto example = testing::run({kShoal, "model", "show", kExample}, {}, 60s);
  ASSERT_EQ(example.exit_code, 0) << example.output;
  EXPECT_NE(example.output.find("input 1x28x28, 10 classes"), std::string::npos) << example.output;
  EXPECT_NE(example.output.find("concat stage1.0.a.relu stage1.0.b.relu"), std::string::npos) << example.output;
}

TEST(ModelFileJobs, ABadModelFileStopsEveryCommandWithExitTwoAndOneLine) {
  TempDir dir;
  const std::string bad = dir.file("bad.yaml");
  std::ofstream(bad) << "layers:\n  - {name: c, op: conv, out: 8, kernel: 3}\n  - {name: s, op: add, from: [c, input]}\n";
  const std::string job = kSource + "/examples/fashion_mnist_cnn.ini";
  for (const auto& argv : std::vector<std::vector<std::string>>{
           {kShoal, "model", "show", bad},
           {kShoal, "train", job, "--model=" + bad, "--data.train_limit=100", "--data.test_limit=100"},
           {kShoal, "launch", kSource + "/examples/fashion_mnist_async.ini", "--local", "--model=" + bad,
            "--data.train_limit=100", "--data.test_limit=100"}}) {
    auto r = testing::run(argv, {}, 120s);
    SCOPED_TRACE(argv[1]);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    // `model show` builds the file for 3x224x224 (it names no input), the jobs for the data's 1x28x28.
    const std::string shapes = argv[1] == "model" ? "3x224x224 but 'c' is 8x222x222" : "1x28x28 but 'c' is 8x26x26";
    EXPECT_NE(r.output.find(bad + ":3: add 's': input 'input' is " + shapes + " (an add needs equal shapes)\n"),
              std::string::npos)
        << r.output;
  }
  auto unknown = testing::run({kShoal, "config", job, "--model=resnet21"}, {}, 60s);
  EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
  EXPECT_NE(unknown.output.find("model = 'resnet21' is not one of: cnn, cnn_bn, mlp, mobilenet_v2, resnet18"),
            std::string::npos)
      << unknown.output;
}

}  // namespace
}  // namespace shoal
