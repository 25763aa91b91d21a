// `shoal checkpoint verify|inspect DIR` as a process, on checkpoints written with the library:
// exit 0 and a line per file when every file matches, exit 5 naming the file when one does not,
// the choice of checkpoint under a root, and what inspect prints.
#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using testing::read_file;
using testing::run;
using testing::TempDir;
using testing::write_file;

const std::string kShoal = SHOAL_BINARY;

const char* kLayout =
    "param conv1.weight 0 288 32x1x3x3\n"
    "param conv1.bias 288 320 32\n"
    "param fc.weight 320 1000 68x10\n"
    "buffer bn1.running_mean 0 32 32\n";

// ckpt-<step> under root as the coordinator and two servers would leave it: two range files
// of a 1000-element arena with a velocity slot, position, layout and the MANIFEST.
std::string make_checkpoint(const std::string& root, std::int64_t step) {
  std::string dir = root + "/" + checkpoint_name(step);
  fs::create_directories(dir);
  std::vector<float> values(1000), velocity(1000);
  for (int i = 0; i < 1000; ++i) {
    values[i] = 0.25f * static_cast<float>(i);
    velocity[i] = -0.5f * static_cast<float>(i);
  }
  Manifest m;
  m.step = step;
  for (auto [begin, end] : {std::pair<std::int64_t, std::int64_t>{0, 600}, {600, 1000}}) {
    RangeWrite range;
    range.begin = begin;
    range.end = end;
    range.slots = {"velocity"};
    range.arrays = {{{values.data() + begin, end - begin}}, {{velocity.data() + begin, end - begin}}};
    range.updates = {{begin, step}, {begin + 100, step - 1}};
    m.files.push_back(write_range_file(dir, range));
  }
  m.files.push_back(write_file_atomic(dir, "position", "epoch 2 batch 17 samples 12345\n"));
  m.files.push_back(write_file_atomic(dir, "layout", std::string(kLayout)));
  write_manifest(dir, m);
  return dir;
}

void flip_byte(const std::string& path, std::size_t at) {
  std::string bytes = read_file(path);
  bytes.at(at) = static_cast<char>(bytes[at] ^ 0x10);
  fs::remove(path);
  write_file(path, bytes);
}

bool has(const std::string& output, const std::string& text) { return output.find(text) != std::string::npos; }

TEST(CheckpointCli, VerifyPassesThenNamesTheCorruptFileWithExitCode5) {
  TempDir root;
  std::string dir = make_checkpoint(root.path(), 40);
  auto ok = run({kShoal, "checkpoint", "verify", dir});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(has(ok.output, "checkpoint " + dir + ": step 40, 4 files")) << ok.output;
  for (const char* file : {"OK  params.0-600  ", "OK  params.600-1000  ", "OK  position  ", "OK  layout  "})
    EXPECT_TRUE(has(ok.output, file)) << file << "\n" << ok.output;
  EXPECT_TRUE(has(ok.output, "all 4 files match the MANIFEST")) << ok.output;

  flip_byte(dir + "/params.600-1000", 1000);
  auto bad = run({kShoal, "checkpoint", "verify", dir + "/"});
  EXPECT_EQ(bad.exit_code, 5) << bad.output;
  EXPECT_TRUE(has(bad.output, "shoal: error: " + dir + "/params.600-1000: checksum mismatch")) << bad.output;
  EXPECT_TRUE(has(bad.output, "the file was changed or corrupted")) << bad.output;
}

TEST(CheckpointCli, UnderARootItUsesTheCheckpointAJobWouldResumeFrom) {
  TempDir root;
  make_checkpoint(root.path(), 10);
  make_checkpoint(root.path(), 20);
  write_latest(root.path(), "ckpt-20");
  auto latest = run({kShoal, "checkpoint", "verify", root.path()});
  EXPECT_EQ(latest.exit_code, 0) << latest.output;
  EXPECT_TRUE(has(latest.output, "using " + root.file("ckpt-20") + " (named by LATEST)")) << latest.output;

  flip_byte(root.file("ckpt-20/layout"), 3);
  auto fallback = run({kShoal, "checkpoint", "verify", root.path()});
  EXPECT_EQ(fallback.exit_code, 0) << fallback.output;
  EXPECT_TRUE(has(fallback.output,
                  "passed over " + root.file("ckpt-20") + ": " + root.file("ckpt-20/layout") + ": checksum mismatch"))
      << fallback.output;
  EXPECT_TRUE(has(fallback.output, "using " + root.file("ckpt-10") + " (the newest that verifies")) << fallback.output;
  EXPECT_TRUE(has(fallback.output, "all 4 files match the MANIFEST")) << fallback.output;

  fs::remove(root.file("ckpt-10/position"));
  auto none = run({kShoal, "checkpoint", "verify", root.path()});
  EXPECT_EQ(none.exit_code, 5) << none.output;
  EXPECT_TRUE(
      has(none.output, "passed over " + root.file("ckpt-10") + ": " + root.file("ckpt-10/position") + ": missing"))
      << none.output;
  EXPECT_TRUE(has(none.output, "shoal: error: no usable checkpoint in '" + root.path() + "'")) << none.output;
}

TEST(CheckpointCli, InspectPrintsTheStepFilesRangesPositionAndLayout) {
  TempDir root;
  std::string dir = make_checkpoint(root.path(), 40);
  auto r = run({kShoal, "checkpoint", "inspect", dir});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(has(r.output, "checkpoint " + dir + ": step 40, 4 files")) << r.output;
  EXPECT_TRUE(has(r.output, "range files: 2, 1000 elements")) << r.output;
  EXPECT_TRUE(has(r.output,
                  "params.0-600  elements [0, 600)  arrays: values, velocity  updates: 2 chunks (first "
                  "element:updates) 0:40 100:39"))
      << r.output;
  EXPECT_TRUE(has(r.output, "params.600-1000  elements [600, 1000)  arrays: values, velocity")) << r.output;
  EXPECT_TRUE(has(r.output, "position:\nepoch 2 batch 17 samples 12345\n")) << r.output;
  EXPECT_TRUE(has(r.output, std::string("layout:\n") + kLayout)) << r.output;
  // Every file with its size and CRC, as the MANIFEST has them.
  for (const auto& f : read_manifest(dir).files) {
    char crc[16];
    std::snprintf(crc, sizeof(crc), "%08x", f.crc);
    EXPECT_TRUE(has(r.output, std::to_string(f.size) + " bytes  crc32c " + crc + "  " + f.name)) << r.output;
  }
}

TEST(CheckpointCli, BadUsageIsExit2AndAMissingDirectoryExit5) {
  TempDir root;
  for (std::vector<std::string> args : {std::vector<std::string>{"checkpoint"},
                                        {"checkpoint", "frobnicate", root.path()},
                                        {"checkpoint", "verify"},
                                        {"checkpoint", "verify", root.path(), "extra"}}) {
    args.insert(args.begin(), kShoal);
    auto r = run(args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_TRUE(has(r.output, "usage: shoal checkpoint inspect DIR")) << r.output;
  }
  auto missing = run({kShoal, "checkpoint", "inspect", root.file("absent")});
  EXPECT_EQ(missing.exit_code, 5) << missing.output;
  EXPECT_TRUE(has(missing.output, "'" + root.file("absent") + "' is not a directory")) << missing.output;
  auto empty = run({kShoal, "checkpoint", "inspect", root.path()});
  EXPECT_EQ(empty.exit_code, 5) << empty.output;
  EXPECT_TRUE(has(empty.output, "no LATEST and no ckpt-<step> directory")) << empty.output;
}

}  // namespace
}  // namespace shoal
