// The data layer alone (no model, no MPI): image decoding, the tar reader, transforms, the two
// epoch orders, the image data sets' index and their bad input, and the input pipeline.
#include <gtest/gtest.h>
#include <spng.h>
#include <turbojpeg.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <thread>

#include "base/error.h"
#include "data/image.h"
#include "data/loader.h"
#include "data/shard.h"
#include "data/source.h"
#include "data/tar.h"
#include "data/transform.h"
#include "data/writer.h"
#include "tests/support/subprocess.h"

using shoal::testing::TempDir;
using shoal::testing::read_file;

namespace shoal {
namespace {
namespace fs = std::filesystem;

Image gradient(std::int64_t h, std::int64_t w, std::int64_t c) {
  Image img{h, w, c, {}};
  img.pixels.resize(static_cast<std::size_t>(h * w * c));
  for (std::int64_t y = 0; y < h; ++y)
    for (std::int64_t x = 0; x < w; ++x)
      for (std::int64_t k = 0; k < c; ++k)
        img.pixels[static_cast<std::size_t>((y * w + x) * c + k)] = static_cast<std::uint8_t>((x * 3 + y * 5 + k * 60) % 256);
  return img;
}

void write_bytes(const std::string& path, const std::vector<std::uint8_t>& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  if (!bytes.empty())
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A PNG of another colour type, written with libspng directly.
std::vector<std::uint8_t> png_of(int color_type, int bit_depth, std::int64_t h, std::int64_t w,
                                 const std::vector<std::uint8_t>& raw, const spng_plte* plte = nullptr) {
  spng_ctx* ctx = spng_ctx_new(SPNG_CTX_ENCODER);
  spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
  spng_ihdr ihdr{static_cast<std::uint32_t>(w), static_cast<std::uint32_t>(h), static_cast<std::uint8_t>(bit_depth),
                 static_cast<std::uint8_t>(color_type), 0, 0, 0};
  spng_set_ihdr(ctx, &ihdr);
  if (plte) spng_set_plte(ctx, const_cast<spng_plte*>(plte));
  EXPECT_EQ(spng_encode_image(ctx, raw.data(), raw.size(), SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE), 0);
  std::size_t len = 0;
  int err = 0;
  auto* buf = static_cast<std::uint8_t*>(spng_get_png_buffer(ctx, &len, &err));
  std::vector<std::uint8_t> out(buf, buf + len);
  std::free(buf);
  spng_ctx_free(ctx);
  return out;
}

// ---- decoding ------------------------------------------------------------------------------

TEST(Image, PngRoundTripsGrayAndRgbAndConvertsBetweenThem) {
  Image rgb = gradient(17, 23, 3), gray = gradient(17, 23, 1);
  Image back = decode_image(encode_png(rgb), 3, "rgb.png");
  EXPECT_EQ(back.pixels, rgb.pixels);
  EXPECT_EQ(decode_image(encode_png(gray), 1, "gray.png").pixels, gray.pixels);
  // Gray to RGB repeats the value; RGB to gray is ITU-R 601 luma.
  Image g3 = decode_image(encode_png(gray), 3, "gray.png");
  ASSERT_EQ(g3.channels, 3);
  EXPECT_EQ(g3.pixels[3 * 5 + 0], gray.pixels[5]);
  EXPECT_EQ(g3.pixels[3 * 5 + 2], gray.pixels[5]);
  Image r1 = decode_image(encode_png(rgb), 1, "rgb.png");
  const std::uint8_t* p = rgb.pixels.data() + 3 * 7;
  EXPECT_EQ(r1.pixels[7], (299 * p[0] + 587 * p[1] + 114 * p[2] + 500) / 1000);
  ImageHeader h = read_image_header(encode_png(gray), "gray.png");
  EXPECT_EQ(h.height, 17);
  EXPECT_EQ(h.width, 23);
  EXPECT_TRUE(h.gray);
}

TEST(Image, PalettePngAnd16BitPngAreConverted) {
  spng_plte plte{};
  plte.n_entries = 2;
  plte.entries[0] = {10, 20, 30, 0};
  plte.entries[1] = {200, 100, 50, 0};
  std::vector<std::uint8_t> indices = {0, 1, 1, 0};
  Image pal = decode_image(png_of(SPNG_COLOR_TYPE_INDEXED, 8, 2, 2, indices, &plte), 3, "palette.png");
  EXPECT_EQ(pal.pixels, (std::vector<std::uint8_t>{10, 20, 30, 200, 100, 50, 200, 100, 50, 10, 20, 30}));
  // 16-bit gray: 0x1234 becomes 0x12.
  std::vector<std::uint8_t> gray16 = {0x34, 0x12, 0xFF, 0xFF};  // host (little) endian for libspng
  Image g = decode_image(png_of(SPNG_COLOR_TYPE_GRAYSCALE, 16, 1, 2, gray16), 1, "gray16.png");
  ASSERT_EQ(g.pixels.size(), 2u);
  EXPECT_NEAR(g.pixels[0], 0x12, 1);
  EXPECT_EQ(g.pixels[1], 0xFF);
}

TEST(Image, JpegDecodesCloseToTheSourceAndScalesInTheDctDomain) {
  Image rgb{512, 384, 3, {}};  // smooth: what JPEG keeps well
  for (int y = 0; y < 512; ++y)
    for (int x = 0; x < 384; ++x)
      for (int k = 0; k < 3; ++k) rgb.pixels.push_back(static_cast<std::uint8_t>((x + y) / 4 + 20 * k));
  auto jpeg = encode_jpeg(rgb, 95);
  Image full = decode_image(jpeg, 3, "a.jpg");
  ASSERT_EQ(full.height, 512);
  ASSERT_EQ(full.width, 384);
  double err = 0;
  for (std::size_t i = 0; i < full.pixels.size(); ++i) err += std::abs(full.pixels[i] - rgb.pixels[i]);
  EXPECT_LT(err / static_cast<double>(full.pixels.size()), 4.0);
  // The smallest scale that keeps at least 100 x 100: 2/8 of 384 is 96, so 3/8 (192 x 144).
  Image small = decode_image(jpeg, 3, "a.jpg", 100, 100);
  EXPECT_EQ(small.height, 192);
  EXPECT_EQ(small.width, 144);
  Image gray = decode_image(jpeg, 1, "a.jpg", 64, 48);  // 1/8
  EXPECT_EQ(gray.height, 64);
  EXPECT_EQ(gray.channels, 1);
}

TEST(Image, CmykJpegIsConvertedToRgb) {
  // Inverted (Adobe) CMYK inks with K = 255 leave the RGB value at the ink's.
  std::vector<std::uint8_t> cmyk(8 * 8 * 4);
  for (std::size_t i = 0; i < 64; ++i) {
    cmyk[4 * i] = 200;
    cmyk[4 * i + 1] = 100;
    cmyk[4 * i + 2] = 50;
    cmyk[4 * i + 3] = 255;
  }
  tjhandle h = tjInitCompress();
  unsigned char* buf = nullptr;
  unsigned long len = 0;
  ASSERT_EQ(tjCompress2(h, cmyk.data(), 8, 0, 8, TJPF_CMYK, &buf, &len, TJSAMP_444, 100, 0), 0);
  std::vector<std::uint8_t> jpeg(buf, buf + len);
  tjFree(buf);
  tjDestroy(h);
  Image rgb = decode_image(jpeg, 3, "cmyk.jpg");
  EXPECT_NEAR(rgb.pixels[0], 200, 3);
  EXPECT_NEAR(rgb.pixels[1], 100, 3);
  EXPECT_NEAR(rgb.pixels[2], 50, 3);
}

TEST(Image, DamagedFilesAreDataErrorsNamingTheFile) {
  auto png = encode_png(gradient(40, 40, 3));
  auto jpeg = encode_jpeg(gradient(40, 40, 3), 90);
  struct Case {
    std::string what;
    std::vector<std::uint8_t> bytes;
    std::string expect;
  };
  std::vector<Case> cases = {
      {"empty", {}, "empty file"},
      {"text", {'h', 'e', 'l', 'l', 'o'}, "not a JPEG or PNG"},
      {"truncated png", {png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() / 2)}, "PNG"},
      {"truncated jpeg", {jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(jpeg.size() / 2)}, "JPEG"},
      {"png signature only", {png.begin(), png.begin() + 8}, "PNG"},
  };
  for (const Case& c : cases) {
    try {
      decode_image(c.bytes, 3, "dir/" + c.what);
      ADD_FAILURE() << c.what << ": decoded";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("dir/" + c.what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.expect), std::string::npos) << e.what();
    }
  }
}

// ---- tar -------------------------------------------------------------------------------------

TEST(Tar, ListsMembersWithTheirOffsetsAndReadsWhatTheWriterWrote) {
  TempDir dir;
  const std::string path = dir.file("a.tar");
  TarWriter w(path);
  std::vector<std::uint8_t> one(700, 7), two = {'4', '\n'};
  w.add("k1.png", one);
  w.add("k1.cls", two);
  w.add("empty.txt", {});
  w.close();
  auto members = list_tar(path);
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[0].name, "k1.png");
  EXPECT_EQ(members[0].offset, 512);
  EXPECT_EQ(members[0].size, 700);
  EXPECT_EQ(members[1].offset, 512 + 1024 + 512);
  EXPECT_EQ(members[2].size, 0);
  auto bytes = read_bytes(path);
  EXPECT_EQ(bytes[static_cast<std::size_t>(members[1].offset)], '4');
}

TEST(Tar, ReadsPaxAndGnuLongNamesFromGnuTar) {
  if (std::system("command -v tar >/dev/null 2>&1") != 0) GTEST_SKIP() << "no tar program to write the archives";
  TempDir dir;
  const std::string longname = std::string(150, 'd') + "/" + std::string(120, 'n') + ".png";
  fs::create_directories(dir.file(std::string(150, 'd')));
  write_bytes(dir.file(longname), {1, 2, 3});
  for (const char* format : {"pax", "gnu"}) {
    const std::string tar = dir.file(std::string(format) + ".tar");
    ASSERT_EQ(std::system(("tar --format=" + std::string(format) + " -C " + dir.path() + " -cf " + tar + " " +
                           std::string(150, 'd'))
                              .c_str()),
              0);
    auto members = list_tar(tar);
    ASSERT_EQ(members.size(), 1u) << format;
    EXPECT_EQ(members[0].name, longname) << format;
    EXPECT_EQ(members[0].size, 3) << format;
    EXPECT_EQ(read_bytes(tar)[static_cast<std::size_t>(members[0].offset) + 2], 3) << format;
  }
}

TEST(Tar, DamageIsADataErrorNamingTheArchive) {
  TempDir dir;
  TarWriter w(dir.file("good.tar"));
  w.add("a.png", std::vector<std::uint8_t>(1000, 1));
  w.add("a.cls", std::vector<std::uint8_t>{'1'});
  w.close();
  auto good = read_bytes(dir.file("good.tar"));
  auto bad_sum = good;
  bad_sum[3] ^= 0x40;
  std::vector<std::pair<std::vector<std::uint8_t>, std::string>> cases = {
      {std::vector<std::uint8_t>{}, "empty file"},
      {std::vector<std::uint8_t>(good.begin(), good.begin() + 700), "truncated"},
      {std::vector<std::uint8_t>(good.begin(), good.begin() + 300), "truncated"},
      {bad_sum, "checksum"},
      {std::vector<std::uint8_t>(2048, 'x'), "checksum"},
  };
  for (auto& [bytes, expect] : cases) {
    try {
      list_tar(bytes, "shard-7.tar");
      ADD_FAILURE() << expect << ": listed";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("shard-7.tar"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << e.what();
    }
  }
}

TEST(Shards, BraceRangesAndListsExpandInOrder) {
  EXPECT_EQ(expand_shards("/d/train-{000..002}.tar"),
            (std::vector<std::string>{"/d/train-000.tar", "/d/train-001.tar", "/d/train-002.tar"}));
  EXPECT_EQ(expand_shards("a.tar, b-{8..10}.tar"), (std::vector<std::string>{"a.tar", "b-8.tar", "b-9.tar", "b-10.tar"}));
  for (const char* bad : {"", "x-{1..}.tar", "x-{3..1}.tar", "x-{a..b}.tar", "x-{1..2.tar"})
    EXPECT_THROW(expand_shards(bad), ConfigError) << bad;
}

// ---- orders ----------------------------------------------------------------------------------

TEST(EpochOrder, GroupedPermutationShufflesShardsAndWindowsOnly) {
  std::vector<std::int64_t> ends = {100, 250, 300};
  auto a = grouped_epoch_permutation(ends, 32, 7, 1);
  auto b = grouped_epoch_permutation(ends, 32, 7, 1);
  auto c = grouped_epoch_permutation(ends, 32, 7, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<std::int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::int64_t> all(300);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(sorted, all) << "a permutation";
  // Each group is contiguous in the order, and within it each window of 32 stays together.
  std::size_t at = 0;
  std::set<int> groups_seen;
  while (at < a.size()) {
    const int g = a[at] < 100 ? 0 : a[at] < 250 ? 1 : 2;
    EXPECT_TRUE(groups_seen.insert(g).second) << "group " << g << " visited twice";
    const std::int64_t begin = g == 0 ? 0 : ends[static_cast<std::size_t>(g - 1)], end = ends[static_cast<std::size_t>(g)];
    for (std::int64_t w = begin; w < end; w += 32) {
      const std::int64_t len = std::min<std::int64_t>(32, end - w);
      for (std::int64_t k = 0; k < len; ++k) {
        const std::int64_t v = a[at + static_cast<std::size_t>(k)];
        EXPECT_TRUE(v >= w && v < w + len) << "sample " << v << " left its window";
      }
      at += static_cast<std::size_t>(len);
    }
  }
}

// ---- transforms ------------------------------------------------------------------------------

TEST(Transform, EvaluationResizesTheShorterSideThenCropsTheCentre) {
  DataSpec spec;
  spec.size = 224;
  spec.resize = 256;
  TransformPlan p = plan_transform(spec, false, 512, 1024, nullptr);  // resized to 256 x 512
  EXPECT_EQ(p.out_h, 224);
  EXPECT_DOUBLE_EQ(p.h, 448);
  EXPECT_DOUBLE_EQ(p.w, 448);
  EXPECT_DOUBLE_EQ(p.x, 288);
  EXPECT_DOUBLE_EQ(p.y, 32);
  EXPECT_FALSE(p.flip);
  std::int64_t mh = 0, mw = 0;
  min_decode_size(p, 512, 1024, &mh, &mw);
  EXPECT_EQ(mh, 256);
  EXPECT_EQ(mw, 512);
}

TEST(Transform, RandomResizedCropIsAFunctionOfSeedEpochAndSampleWithinItsRanges) {
  DataSpec spec;
  spec.size = 32;
  spec.train_crop = TrainCrop::random_resized;
  spec.flip = true;
  int flips = 0;
  for (std::int64_t i = 0; i < 200; ++i) {
    Rng r1 = sample_rng(1, 3, i), r2 = sample_rng(1, 3, i);
    TransformPlan a = plan_transform(spec, true, 300, 400, &r1), b = plan_transform(spec, true, 300, 400, &r2);
    EXPECT_EQ(a.x, b.x);
    EXPECT_EQ(a.w, b.w);
    EXPECT_EQ(a.flip, b.flip);
    flips += a.flip;
    const double area = a.w * a.h / (300.0 * 400.0), ratio = a.w / a.h;
    EXPECT_GE(area, 0.08 * 0.97);
    EXPECT_LE(area, 1.0);
    EXPECT_GE(ratio, 0.75 * 0.95);
    EXPECT_LE(ratio, 4.0 / 3.0 * 1.05);
    EXPECT_LE(a.x + a.w, 400);
    EXPECT_LE(a.y + a.h, 300);
  }
  EXPECT_GT(flips, 60);
  EXPECT_LT(flips, 140);
  Rng r3 = sample_rng(1, 4, 0), r4 = sample_rng(1, 3, 0);
  TransformPlan c = plan_transform(spec, true, 300, 400, &r3), d = plan_transform(spec, true, 300, 400, &r4);
  EXPECT_TRUE(c.x != d.x || c.y != d.y || c.w != d.w) << "another epoch, another crop";
}

TEST(Transform, RenderingKeepsFlatImagesFlatAveragesWhenShrinkingAndFlips) {
  Normalization id = identity_normalization(3);
  Image flat{100, 80, 3, std::vector<std::uint8_t>(100 * 80 * 3, 77)};
  TransformPlan p{10, 5, 60, 90, 20, 13, false};
  std::vector<float> out(3 * 20 * 13);
  render_transform(flat, p, 100, 80, id, out.data());
  for (float v : out) EXPECT_FLOAT_EQ(v, 77.f / 255.f);
  // A 1-pixel checkerboard shrunk 4x is its mean.
  Image board{64, 64, 1, {}};
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) board.pixels.push_back((x + y) % 2 ? 200 : 0);
  std::vector<float> small(16 * 16);
  render_transform(board, TransformPlan{0, 0, 64, 64, 16, 16, false}, 64, 64, identity_normalization(1), small.data());
  for (float v : small) EXPECT_NEAR(v * 255.f, 100.f, 2.f);
  // Identity and flip.
  Image g = gradient(4, 5, 1);
  std::vector<float> same(20), flipped(20);
  render_transform(g, TransformPlan{0, 0, 5, 4, 4, 5, false}, 4, 5, identity_normalization(1), same.data());
  render_transform(g, TransformPlan{0, 0, 5, 4, 4, 5, true}, 4, 5, identity_normalization(1), flipped.data());
  for (int y = 0; y < 4; ++y)
    for (int x = 0; x < 5; ++x) {
      EXPECT_FLOAT_EQ(same[y * 5 + x] * 255.f, g.pixels[y * 5 + x]);
      EXPECT_FLOAT_EQ(flipped[y * 5 + x], same[y * 5 + (4 - x)]);
    }
}

// ---- image data sets -------------------------------------------------------------------------

// 3 classes x 4 images of 8 x 8 RGB, written as PNG (or JPEG) under DIR/train and DIR/val.
Dataset tiny(std::int64_t per_class, std::int64_t channels = 3) {
  Dataset d;
  d.count = 3 * per_class;
  d.channels = channels;
  d.height = d.width = 8;
  d.classes = 3;
  for (std::int64_t i = 0; i < d.count; ++i) {
    d.labels.push_back(static_cast<std::int32_t>(i % 3));
    for (std::int64_t p = 0; p < d.sample_size(); ++p) d.pixels.push_back(static_cast<std::uint8_t>(i * 10 + p));
  }
  return d;
}

DataSpec folder_spec(const std::string& dir) {
  DataSpec s;
  s.format = DataFormat::folder;
  s.dir = dir;
  s.normalize = false;
  return s;
}

TEST(ImageFolder, ClassesAreTheSortedFoldersAndSamplesDecodeToTheWrittenPixels) {
  TempDir dir;
  Dataset d = tiny(4);
  write_image_folder(d, dir.file("train"), ImageCodec::png, {"cat", "ant", "bee"});
  write_image_folder(tiny(1), dir.file("val"), ImageCodec::png, {"cat", "ant", "bee"});
  DataSources s = open_data(folder_spec(dir.path()), Logger("test", LogLevel::warn));
  EXPECT_EQ(s.train->count(), 12);
  EXPECT_EQ(s.test->count(), 3);
  EXPECT_EQ(s.train->info().class_names, (std::vector<std::string>{"ant", "bee", "cat"}));
  EXPECT_EQ(s.train->info().channels, 3);
  EXPECT_EQ(s.train->info().height, 8);
  // Sample 0 is the first file of "ant": the dataset's sample 1 (label 1 was written as "ant").
  std::vector<float> x(3 * 64);
  std::int32_t y = -1;
  ASSERT_TRUE(s.train->load(0, SampleContext{}, x.data(), &y));
  EXPECT_EQ(y, 0);
  const std::uint8_t* src = d.pixels.data() + 1 * d.sample_size();  // CHW
  for (std::int64_t k = 0; k < 3 * 64; ++k) EXPECT_FLOAT_EQ(x[static_cast<std::size_t>(k)] * 255.f, src[k]);
}

TEST(TarShards, SamplesAreKeyedMembersAndTheOrderKeepsShardsTogether) {
  TempDir dir;
  Dataset d = tiny(20);
  auto shards = write_tar_shards(d, dir.file("train"), 25, ImageCodec::png, 3);
  write_tar_shards(tiny(2), dir.file("test"), 25, ImageCodec::png, 3);
  ASSERT_EQ(shards.size(), 3u);
  DataSpec spec;
  spec.format = DataFormat::tar;
  spec.train = dir.file("train-{000000..000002}.tar");
  spec.test = dir.file("test-000000.tar");
  spec.normalize = false;
  spec.shuffle_buffer = 8;
  DataSources s = open_data(spec, Logger("test", LogLevel::warn));
  EXPECT_EQ(s.train->count(), 60);
  EXPECT_EQ(s.train->info().classes, 3);
  std::vector<float> x(3 * 64);
  std::int32_t y = -1;
  for (std::int64_t i = 0; i < 60; ++i) {
    ASSERT_TRUE(s.train->load(i, SampleContext{}, x.data(), &y));
    // The key is the dataset index: the pixels say which sample it was.
    const auto& sample = static_cast<const ImageSource&>(*s.train).index().samples[static_cast<std::size_t>(i)];
    const std::int64_t original = std::stoll(sample.member.substr(0, 8));
    EXPECT_EQ(y, d.labels[static_cast<std::size_t>(original)]);
    EXPECT_FLOAT_EQ(x[0] * 255.f, d.pixels[static_cast<std::size_t>(original * d.sample_size())]);
  }
  auto order = s.train->epoch_order(1, 1);
  // Shard by shard: 25, 25, 10 consecutive positions from one shard each.
  auto shard_of = [](std::int64_t i) { return i < 25 ? 0 : i < 50 ? 1 : 2; };
  int changes = 0;
  for (std::size_t i = 1; i < order.size(); ++i) changes += shard_of(order[i]) != shard_of(order[i - 1]);
  EXPECT_EQ(changes, 2);
  // data.train_limit keeps samples spread over every shard, and the shards stay groups.
  spec.train_limit = 30;
  DataSources limited = open_data(spec, Logger("test", LogLevel::warn));
  ASSERT_EQ(limited.train->count(), 30);
  const auto& index = static_cast<const ImageSource&>(*limited.train).index();
  EXPECT_EQ(index.group_ends, (std::vector<std::int64_t>{13, 25, 30}));
  auto limited_order = limited.train->epoch_order(1, 1);
  std::vector<std::int64_t> sorted(limited_order);
  std::sort(sorted.begin(), sorted.end());
  for (std::int64_t i = 0; i < 30; ++i) EXPECT_EQ(sorted[static_cast<std::size_t>(i)], i);
}

struct BadCase {
  std::string name;
  std::function<void(const std::string& dir)> damage;  // on a good data set
  std::string expect;                                   // in the message
};

std::vector<std::uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

// Loads every training sample of `spec`: with on_bad_sample = fail, one DataError containing
// `expect` (at indexing or at the bad sample's load); with skip, `good` samples load.
void expect_fail_then_skip(DataSpec spec, const std::string& name, const std::string& expect, std::int64_t good) {
  Logger quiet("test", LogLevel::off);
  auto load_all = [&] {
    DataSources s = open_data(spec, quiet);
    std::vector<float> x(static_cast<std::size_t>(s.train->sample_size()));
    std::int32_t y = 0;
    std::int64_t loaded = 0;
    for (std::int64_t i = 0; i < s.train->count(); ++i) loaded += s.train->load(i, SampleContext{}, x.data(), &y);
    return loaded;
  };
  spec.on_bad_sample = OnBadSample::fail;
  try {
    load_all();
    ADD_FAILURE() << name << ": no error";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(expect), std::string::npos) << name << ": " << e.what();
  }
  spec.on_bad_sample = OnBadSample::skip;
  EXPECT_EQ(load_all(), good) << name << ": the good samples";
}

TEST(BadInput, EachCaseFailsNamingTheFileOrIsSkippedAndCounted) {
  const auto png = encode_png(gradient(8, 8, 3));
  std::vector<BadCase> folder_cases = {
      {"corrupt image", [&](const std::string& d) { write_bytes(d + "/train/0/bad.png", bytes_of("not an image")); },
       "train/0/bad.png: not a JPEG or PNG"},
      {"truncated image",
       [&](const std::string& d) {
         write_bytes(d + "/train/1/cut.png", {png.begin(), png.begin() + static_cast<std::ptrdiff_t>(png.size() - 20)});
       },
       "train/1/cut.png: corrupt or truncated PNG"},
      {"zero bytes", [&](const std::string& d) { write_bytes(d + "/train/2/zero.jpg", {}); },
       "train/2/zero.jpg: empty file"},
      {"not an image name", [&](const std::string& d) { write_bytes(d + "/train/1/notes.txt", bytes_of("hi")); },
       "train/1/notes.txt: not an image file name"},
      {"empty class folder", [&](const std::string& d) { fs::create_directories(d + "/train/3"); },
       "train/3: empty class folder"},
      {"file among class folders", [&](const std::string& d) { write_bytes(d + "/train/README", bytes_of("x")); },
       "train/README: a file where class folders are expected"},
      {"dangling link as an image",
       [&](const std::string& d) { fs::create_symlink(d + "/nowhere.png", d + "/train/0/link.png"); },
       "train/0/link.png: not a regular file"},
  };
  for (const BadCase& c : folder_cases) {
    TempDir dir;
    write_image_folder(tiny(4), dir.file("train"), ImageCodec::png);
    write_image_folder(tiny(1), dir.file("val"), ImageCodec::png);
    c.damage(dir.path());
    expect_fail_then_skip(folder_spec(dir.path()), c.name, c.expect, 12);
  }
}

TEST(BadInput, TarCasesFailNamingShardAndMemberOrAreSkipped) {
  const auto png = encode_png(gradient(8, 8, 3));
  struct TarCase {
    std::string name;
    std::vector<std::pair<std::string, std::vector<std::uint8_t>>> members;
    std::string expect;
    std::int64_t good;
  };
  auto cls = [](const char* s) { return bytes_of(s); };
  std::vector<TarCase> cases = {
      {"no cls", {{"a.png", png}, {"a.cls", cls("1")}, {"b.png", png}}, "member b.png has no class member b.cls", 1},
      {"cls not an integer", {{"a.png", png}, {"a.cls", cls("cat")}, {"b.png", png}, {"b.cls", cls("0")}},
       "member a.cls does not hold a class index", 1},
      {"cls beyond classes", {{"a.png", png}, {"a.cls", cls("7")}, {"b.png", png}, {"b.cls", cls("0")}},
       "holds class 7, not below the 3 classes", 1},
      {"cls without image", {{"a.cls", cls("1")}, {"b.png", png}, {"b.cls", cls("0")}}, "member a.cls has no image", 1},
      {"corrupt image in tar", {{"a.png", bytes_of("garbage")}, {"a.cls", cls("1")}, {"b.png", png}, {"b.cls", cls("2")}},
       "train-000000.tar: member a.png: not a JPEG or PNG", 1},
  };
  for (const TarCase& c : cases) {
    TempDir dir;
    TarWriter w(dir.file("train-000000.tar"));
    for (auto& [name, bytes] : c.members) w.add(name, bytes);
    w.close();
    TarWriter t(dir.file("test-000000.tar"));
    t.add("t.png", png);
    t.add("t.cls", cls("0"));
    t.close();
    DataSpec spec;
    spec.format = DataFormat::tar;
    spec.train = dir.file("train-000000.tar");
    spec.test = dir.file("test-000000.tar");
    spec.classes = 3;
    spec.normalize = false;
    expect_fail_then_skip(spec, c.name, c.expect, c.good);
  }
  // A truncated shard is not a sample's problem: always an error naming the shard.
  TempDir dir;
  TarWriter w(dir.file("cut.tar"));
  w.add("a.png", png);
  w.add("a.cls", cls("1"));
  w.close();
  auto bytes = read_bytes(dir.file("cut.tar"));
  bytes.resize(700);
  write_bytes(dir.file("cut.tar"), bytes);
  DataSpec spec;
  spec.format = DataFormat::tar;
  spec.train = dir.file("cut.tar");
  spec.test = dir.file("cut.tar");
  spec.on_bad_sample = OnBadSample::skip;
  try {
    open_data(spec, Logger("test", LogLevel::off));
    ADD_FAILURE() << "a truncated shard was read";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("cut.tar: truncated tar archive"), std::string::npos) << e.what();
  }
}

// ---- the input pipeline ----------------------------------------------------------------------

// A source whose sample i is the constant i, that counts loads in progress and ahead.
class CountingSource final : public DataSource {
 public:
  explicit CountingSource(std::int64_t n) {
    info_.count = n;
    info_.channels = 1;
    info_.height = info_.width = 2;
    name_ = "counting";
  }
  bool load(std::int64_t i, const SampleContext& ctx, float* x, std::int32_t* y) const override {
    loads.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::microseconds(200));  // a decode's worth of work
    if (i % 97 == 13 && skip_some) return false;
    for (int k = 0; k < 4; ++k) x[k] = static_cast<float>(i) + static_cast<float>(ctx.epoch);
    *y = static_cast<std::int32_t>(i % 10);
    return true;
  }
  bool decodes() const override { return true; }
  mutable std::atomic<std::int64_t> loads{0};
  bool skip_some = false;
};

TEST(BatchLoader, BatchesArriveInOrderWithTheirSamplesWhateverTheThreads) {
  CountingSource src(1000);
  src.skip_some = true;
  std::vector<std::int64_t> order(1000);
  std::iota(order.rbegin(), order.rend(), 0);
  for (std::int64_t threads : {0, 1, 3}) {
    BatchLoader loader(threads, 3);
    std::vector<BatchLoader::Request> requests;
    for (std::int64_t b = 0; b < 1000; b += 64)
      requests.push_back({&src, std::span<const std::int64_t>(order.data() + b, static_cast<std::size_t>(std::min<std::int64_t>(64, 1000 - b))),
                          SampleContext{true, 1, 5}});
    const std::size_t n = requests.size();
    loader.start(std::move(requests));
    std::int64_t at = 0, skipped = 0;
    for (std::size_t b = 0; b < n; ++b) {
      BatchLoader::Batch batch = loader.next();
      skipped += batch.skipped;
      const float* x = batch.x.data<float>();
      for (std::int64_t k = 0; k < batch.count; ++k, ++at) {
        while (order[static_cast<std::size_t>(at)] % 97 == 13) ++at;  // the skipped ones
        EXPECT_EQ(x[k * 4], static_cast<float>(order[static_cast<std::size_t>(at)] + 5)) << "threads " << threads;
        EXPECT_EQ(batch.y.data<std::int32_t>()[k], order[static_cast<std::size_t>(at)] % 10);
      }
    }
    EXPECT_FALSE(loader.has_next());
    EXPECT_EQ(skipped, 11) << "i % 97 == 13 below 1000";
  }
}

TEST(BatchLoader, LoadsAtMostThePrefetchWindowAheadOfTheConsumer) {
  CountingSource src(4000);
  std::vector<std::int64_t> order(4000);
  std::iota(order.begin(), order.end(), 0);
  BatchLoader loader(2, 2);
  std::vector<BatchLoader::Request> requests;
  for (std::int64_t b = 0; b < 4000; b += 50)
    requests.push_back({&src, std::span<const std::int64_t>(order.data() + b, 50), SampleContext{}});
  loader.start(std::move(requests));
  loader.next();  // holds batch 0; batches 1 and 2 may load, batch 3 may not
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (src.loads.load() < 150 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(src.loads.load(), 150);
  // Settled: nothing more is loaded until the consumer moves on.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(src.loads.load(), 150);
  loader.next();
  while (src.loads.load() < 200 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(src.loads.load(), 200);
  loader.cancel();  // the rest is dropped, and no load is left running
  const std::int64_t after = src.loads.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(src.loads.load(), after);
}

TEST(BatchLoader, AnErrorReachesTheConsumerOfItsBatch) {
  class Failing final : public DataSource {
   public:
    Failing() {
      info_.count = 100;
      info_.channels = info_.height = info_.width = 1;
    }
    bool load(std::int64_t i, const SampleContext&, float* x, std::int32_t* y) const override {
      SHOAL_REQUIRE(i != 70, DataError, "sample 70 is broken");
      *x = 0;
      *y = 0;
      return true;
    }
    bool decodes() const override { return true; }
  } src;
  std::vector<std::int64_t> order(100);
  std::iota(order.begin(), order.end(), 0);
  BatchLoader loader(2, 4);
  std::vector<BatchLoader::Request> requests;
  for (int b = 0; b < 100; b += 20) requests.push_back({&src, std::span<const std::int64_t>(order.data() + b, 20), {}});
  loader.start(std::move(requests));
  for (int b = 0; b < 3; ++b) EXPECT_NO_THROW(loader.next());
  EXPECT_THROW(loader.next(), DataError);
}

}  // namespace
}  // namespace shoal
