// The image decoders and the tar reader fed damaged bytes in every test run (and under the
// sanitizers): valid JPEG, PNG and tar files with bytes flipped, runs overwritten, truncated or
// extended, and pure noise. Each input must decode (or list) or be refused with a DataError;
// nothing else may escape, and nothing may crash.
#include <gtest/gtest.h>

#include "base/error.h"
#include "compute/rng.h"
#include "data/image.h"
#include "data/tar.h"
#include "data/writer.h"
#include "tests/support/subprocess.h"

using shoal::testing::TempDir;
using shoal::testing::read_file;

namespace shoal {
namespace {

Image pattern(std::int64_t h, std::int64_t w, std::int64_t c) {
  Image img{h, w, c, {}};
  for (std::int64_t i = 0; i < h * w * c; ++i) img.pixels.push_back(static_cast<std::uint8_t>((i * 37) ^ (i >> 5)));
  return img;
}

std::vector<std::uint8_t> mutate(const std::vector<std::uint8_t>& good, Rng& rng) {
  std::vector<std::uint8_t> b = good;
  switch (rng.below(5)) {
    case 0:  // flip a few bits
      for (int k = 0, n = 1 + static_cast<int>(rng.below(8)); k < n && !b.empty(); ++k)
        b[rng.below(b.size())] ^= static_cast<std::uint8_t>(1u << rng.below(8));
      break;
    case 1:  // overwrite a run with noise
      if (!b.empty()) {
        std::size_t at = rng.below(b.size()), len = 1 + rng.below(64);
        for (std::size_t i = at; i < std::min(b.size(), at + len); ++i) b[i] = static_cast<std::uint8_t>(rng.below(256));
      }
      break;
    case 2:  // truncate
      b.resize(rng.below(b.size() + 1));
      break;
    case 3:  // extend with noise
      for (int k = 0, n = 1 + static_cast<int>(rng.below(600)); k < n; ++k) b.push_back(static_cast<std::uint8_t>(rng.below(256)));
      break;
    default:  // a header field set to an extreme value
      if (b.size() > 32) {
        std::size_t at = 8 + rng.below(24);
        for (std::size_t i = at; i < std::min(b.size(), at + 4); ++i) b[i] = rng.below(2) ? 0xFF : 0x00;
      }
  }
  return b;
}

template <typename Fn>
void expect_data_error_or_success(const std::vector<std::uint8_t>& bytes, Fn fn, int* refused) {
  try {
    fn(bytes);
  } catch (const DataError&) {
    ++*refused;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a DataError: " << e.what();
  }
}

TEST(DataFuzz, DamagedJpegAndPngAreDecodedOrRefused) {
  const std::vector<std::vector<std::uint8_t>> seeds = {
      encode_png(pattern(37, 29, 3)), encode_png(pattern(16, 16, 1)), encode_jpeg(pattern(64, 48, 3), 90),
      encode_jpeg(pattern(33, 17, 1), 75)};
  Rng rng(2026);
  int refused = 0, runs = 0;
  for (const auto& seed : seeds) {
    // The valid file decodes.
    EXPECT_NO_THROW(decode_image(seed, 3, "seed"));
    for (int i = 0; i < 600; ++i, ++runs) {
      auto bytes = mutate(seed, rng);
      const int channels = rng.below(2) ? 3 : 1;
      const std::int64_t min_side = static_cast<std::int64_t>(rng.below(40));
      expect_data_error_or_success(
          bytes,
          [&](const std::vector<std::uint8_t>& b) {
            ImageHeader h = read_image_header(b, "fuzz");
            Image img = decode_image(b, channels, "fuzz", min_side, min_side);
            ASSERT_EQ(img.pixels.size(), static_cast<std::size_t>(img.height * img.width * channels));
            ASSERT_LE(img.height, h.height);
          },
          &refused);
    }
    for (int i = 0; i < 50; ++i, ++runs) {  // noise with a valid signature
      std::vector<std::uint8_t> noise(seed.begin(), seed.begin() + 8);
      for (int k = 0; k < 200; ++k) noise.push_back(static_cast<std::uint8_t>(rng.below(256)));
      expect_data_error_or_success(noise, [&](const std::vector<std::uint8_t>& b) { decode_image(b, 3, "noise"); },
                                   &refused);
    }
  }
  EXPECT_GT(refused, runs / 4) << "most damage is detected";
}

TEST(DataFuzz, DamagedTarArchivesAreListedOrRefused) {
  TempDir dir;
  TarWriter w(dir.file("seed.tar"));
  for (int i = 0; i < 5; ++i) {
    w.add("k" + std::to_string(i) + ".png", std::vector<std::uint8_t>(100 + 300 * i, static_cast<std::uint8_t>(i)));
    w.add("k" + std::to_string(i) + ".cls", std::vector<std::uint8_t>{static_cast<std::uint8_t>('0' + i)});
  }
  w.close();
  const std::string seed_text = read_file(dir.file("seed.tar"));
  const std::vector<std::uint8_t> seed(seed_text.begin(), seed_text.end());
  EXPECT_EQ(list_tar(seed, "seed").size(), 10u);
  Rng rng(7);
  int refused = 0;
  for (int i = 0; i < 3000; ++i) {
    auto bytes = mutate(seed, rng);
    expect_data_error_or_success(
        bytes,
        [&](const std::vector<std::uint8_t>& b) {
          for (const TarMember& m : list_tar(b, "fuzz.tar")) {
            ASSERT_GE(m.offset, 0);
            ASSERT_LE(m.offset + m.size, static_cast<std::int64_t>(b.size())) << "a member past the end";
          }
        },
        &refused);
  }
  EXPECT_GT(refused, 300);
}

}  // namespace
}  // namespace shoal
