// Dataset readers on good, truncated and corrupted files (raw and gzip), a fuzz-style sweep
// over every truncation and many byte flips, and the real Fashion-MNIST files from Debian.
#include "data/dataset.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <map>

#include "base/error.h"
#include "compute/rng.h"
#include "data/shard.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using testing::TempDir;
using testing::write_file;

std::string be32(std::uint32_t v) {
  return std::string{static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
}

std::string idx_images(std::uint32_t n, std::uint32_t rows, std::uint32_t cols) {
  std::string s = std::string("\0\0\x08\x03", 4) + be32(n) + be32(rows) + be32(cols);
  for (std::uint32_t i = 0; i < n * rows * cols; ++i) s += static_cast<char>((i * 7) % 256);
  return s;
}

std::string idx_labels(std::uint32_t n) {
  std::string s = std::string("\0\0\x08\x01", 4) + be32(n);
  for (std::uint32_t i = 0; i < n; ++i) s += static_cast<char>(i % 10);
  return s;
}

void write_gzip(const std::string& path, const std::string& content) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, content.data(), static_cast<unsigned>(content.size())), static_cast<int>(content.size()));
  gzclose(f);
}

// Expects read_idx to fail with a DataError whose message contains `fragment`.
void expect_idx_error(const std::string& images, const std::string& labels, const std::string& fragment) {
  try {
    read_idx(images, labels);
    FAIL() << "no error; expected one mentioning '" << fragment << "'";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(IdxReader, ReadsRawAndGzipIdentically) {
  TempDir dir;
  write_file(dir.file("img"), idx_images(5, 4, 3));
  write_file(dir.file("lab"), idx_labels(5));
  write_gzip(dir.file("img.gz"), idx_images(5, 4, 3));
  write_gzip(dir.file("lab.gz"), idx_labels(5));
  Dataset raw = read_idx(dir.file("img"), dir.file("lab"));
  Dataset gz = read_idx(dir.file("img.gz"), dir.file("lab.gz"));
  EXPECT_EQ(raw.count, 5);
  EXPECT_EQ(raw.height, 4);
  EXPECT_EQ(raw.width, 3);
  EXPECT_EQ(raw.channels, 1);
  EXPECT_EQ(raw.pixels, gz.pixels);
  EXPECT_EQ(raw.labels, gz.labels);
  EXPECT_EQ(raw.pixels[13], (13 * 7) % 256);
  EXPECT_EQ(raw.labels[4], 4);
  EXPECT_EQ(read_idx(dir.file("img"), dir.file("lab"), 2).count, 2) << "limit";
}

TEST(IdxReader, RejectsBadFilesWithClearErrors) {
  TempDir dir;
  auto img = idx_images(5, 4, 3), lab = idx_labels(5);
  write_file(dir.file("lab"), lab);
  write_file(dir.file("img"), img);

  write_file(dir.file("short"), img.substr(0, img.size() - 1));
  expect_idx_error(dir.file("short"), dir.file("lab"), "truncated");
  write_file(dir.file("header"), img.substr(0, 9));
  expect_idx_error(dir.file("header"), dir.file("lab"), "truncated IDX header");
  write_file(dir.file("long"), img + "xx");
  expect_idx_error(dir.file("long"), dir.file("lab"), "unexpected bytes");
  std::string magic = img;
  magic[0] = 1;
  write_file(dir.file("magic"), magic);
  expect_idx_error(dir.file("magic"), dir.file("lab"), "magic");
  std::string type = img;
  type[2] = 0x0D;  // float
  write_file(dir.file("type"), type);
  expect_idx_error(dir.file("type"), dir.file("lab"), "element type");
  expect_idx_error(dir.file("lab"), dir.file("lab"), "dimensions");  // labels given as images
  write_file(dir.file("lab4"), idx_labels(4));
  expect_idx_error(dir.file("img"), dir.file("lab4"), "holds 5 images but");
  std::string bad_label = lab;
  bad_label.back() = 10;
  write_file(dir.file("lab10"), bad_label);
  expect_idx_error(dir.file("img"), dir.file("lab10"), "label 10 of sample 4");
  std::string zero_dim = std::string("\0\0\x08\x03", 4) + be32(0) + be32(4) + be32(3);
  write_file(dir.file("zero"), zero_dim);
  expect_idx_error(dir.file("zero"), dir.file("lab"), "dimension 0 is 0");
  std::string huge = std::string("\0\0\x08\x03", 4) + be32(1u << 30) + be32(1u << 20) + be32(1u << 20);
  write_file(dir.file("huge"), huge);
  expect_idx_error(dir.file("huge"), dir.file("lab"), "more than 8 GiB");
  write_file(dir.file("empty"), "");
  expect_idx_error(dir.file("empty"), dir.file("lab"), "too short");
  expect_idx_error(dir.file("missing"), dir.file("lab"), "no such file");
  expect_idx_error(dir.path(), dir.file("lab"), "no such file");  // a directory

  // gzip damage: a truncated stream and a flipped byte in the compressed body.
  write_gzip(dir.file("img.gz"), idx_images(50, 8, 8));
  std::string gz = testing::read_file(dir.file("img.gz"));
  write_file(dir.file("cut.gz"), gz.substr(0, gz.size() / 2));
  expect_idx_error(dir.file("cut.gz"), dir.file("lab"), "truncated");
  std::string flipped = gz;
  flipped[gz.size() - 6] ^= 0x55;  // inside the CRC/length trailer
  write_file(dir.file("crc.gz"), flipped);
  EXPECT_THROW(read_idx(dir.file("crc.gz"), dir.file("lab")), DataError);
}

// Fuzz-style sweep: every truncation length and many random byte flips of a valid pair of
// files must either load or raise DataError — never crash or throw anything else. Every
// truncation is refused, and a damaged header only loads if the damage left it unchanged.
TEST(IdxReader, SurvivesEveryTruncationAndRandomCorruption) {
  TempDir dir;
  const std::string img = idx_images(6, 5, 5), lab = idx_labels(6);
  write_file(dir.file("lab"), lab);
  auto loads = [&](const std::string& images, bool gzip) {
    std::string path = dir.file(gzip ? "f.gz" : "f");
    if (gzip)
      write_gzip(path, images);
    else
      write_file(path, images);
    try {
      Dataset d = read_idx(path, dir.file("lab"));
      EXPECT_EQ(d.pixels.size(), static_cast<std::size_t>(d.count * d.sample_size()));
      return true;
    } catch (const DataError&) {
      return false;
    }
  };
  for (std::size_t len = 0; len < img.size(); ++len)
    EXPECT_FALSE(loads(img.substr(0, len), len % 2 == 0)) << "a file cut to " << len << " bytes loaded";
  Rng rng(5);
  int loaded = 0;
  for (int i = 0; i < 400; ++i) {
    std::string c = img;
    int flips = 1 + static_cast<int>(rng.below(3));
    for (int f = 0; f < flips; ++f) c[rng.below(16)] = static_cast<char>(rng.below(256));  // header bytes
    bool unchanged = c.compare(0, 16, img, 0, 16) == 0;
    bool ok = loads(c, i % 2 == 0);
    EXPECT_EQ(ok, unchanged) << "case " << i << ": a header "
                             << (unchanged ? "left intact was refused" : "that was damaged loaded");
    loaded += ok;
  }
  EXPECT_LT(loaded, 40) << "most random header damage changes the header";
}

TEST(CifarReader, GoodTruncatedAndBadLabel) {
  TempDir dir;
  std::string records;
  for (int r = 0; r < 3; ++r) {
    records += static_cast<char>(r + 2);
    for (int i = 0; i < 3072; ++i) records += static_cast<char>((r + i) % 256);
  }
  write_file(dir.file("good.bin"), records);
  Dataset d = read_cifar10({dir.file("good.bin")});
  EXPECT_EQ(d.count, 3);
  EXPECT_EQ(d.channels, 3);
  EXPECT_EQ(d.height, 32);
  EXPECT_EQ(d.labels, (std::vector<std::int32_t>{2, 3, 4}));
  EXPECT_EQ(d.pixels[3072 + 5], 6);
  EXPECT_EQ(read_cifar10({dir.file("good.bin"), dir.file("good.bin")}, 4).count, 4);

  write_file(dir.file("cut.bin"), records.substr(0, records.size() - 100));
  try {
    read_cifar10({dir.file("cut.bin")});
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("not a whole number"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cut.bin"), std::string::npos) << "names the file";
  }
  std::string bad = records;
  bad[3073] = 12;
  write_file(dir.file("bad.bin"), bad);
  EXPECT_THROW(read_cifar10({dir.file("bad.bin")}), DataError);
  write_file(dir.file("empty.bin"), "");
  EXPECT_THROW(read_cifar10({dir.file("empty.bin")}), DataError);
}

TEST(LoadTrainTest, FindsStandardNamesAndReportsMissingOnes) {
  TempDir dir;
  EXPECT_THROW(load_train_test("idx", dir.path(), 0, 0), DataError);
  write_gzip(dir.file("train-images-idx3-ubyte.gz"), idx_images(8, 4, 4));
  write_gzip(dir.file("train-labels-idx1-ubyte.gz"), idx_labels(8));
  write_file(dir.file("t10k-images-idx3-ubyte"), idx_images(3, 4, 4));
  write_file(dir.file("t10k-labels-idx1-ubyte"), idx_labels(3));
  TrainTestData d = load_train_test("idx", dir.path(), 0, 2);
  EXPECT_EQ(d.train.count, 8);
  EXPECT_EQ(d.test.count, 2);
  EXPECT_THROW(load_train_test("csv", dir.path(), 0, 0), ConfigError);
}

TEST(Normalization, MeanAndStdPerChannelAndGather) {
  Dataset d;
  d.count = 2;
  d.channels = 1;
  d.height = 1;
  d.width = 2;
  d.pixels = {0, 255, 255, 0};
  d.labels = {3, 7};
  Normalization n = compute_normalization(d);
  EXPECT_NEAR(n.mean[0], 0.5, 1e-6);
  EXPECT_NEAR(n.stddev[0], 0.5, 1e-6);
  float x[4];
  std::int32_t y[2];
  std::int64_t idx[2] = {1, 0};
  gather_batch(d, n, idx, x, y);
  EXPECT_FLOAT_EQ(x[0], 1.f);
  EXPECT_FLOAT_EQ(x[1], -1.f);
  EXPECT_EQ(y[0], 7);
  EXPECT_EQ(y[1], 3);
}

TEST(Shards, PermutationIsSeededAndComplete) {
  auto a = epoch_permutation(1000, 1, 1), b = epoch_permutation(1000, 1, 1), c = epoch_permutation(1000, 1, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  auto shards = split_epoch(1000, 300, 3);
  ASSERT_EQ(shards.size(), 4u);
  EXPECT_EQ(shards[3].begin, 900);
  EXPECT_EQ(shards[3].end, 1000);
  EXPECT_EQ(shards[2].epoch, 3);
}

// The real data the README's job trains on (installed by the setup script).
TEST(FashionMnist, DebianFilesLoadWithExpectedCountsAndBalancedClasses) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  ASSERT_TRUE(std::filesystem::exists(dir))
      << dir << " missing: install dataset-fashion-mnist (launch/setup-debian.sh)";
  TrainTestData d = load_train_test("idx", dir, 0, 0);
  EXPECT_EQ(d.train.count, 60000);
  EXPECT_EQ(d.test.count, 10000);
  EXPECT_EQ(d.train.height, 28);
  EXPECT_EQ(d.train.width, 28);
  std::map<int, int> histogram;
  for (auto l : d.test.labels) ++histogram[l];
  ASSERT_EQ(histogram.size(), 10u);
  for (auto [label, count] : histogram) EXPECT_EQ(count, 1000) << "label " << label;
}

}  // namespace
}  // namespace shoal
