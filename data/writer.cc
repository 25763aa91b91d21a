#include "data/writer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "base/error.h"
#include "compute/rng.h"

namespace shoal {
namespace fs = std::filesystem;

Image sample_image(const Dataset& data, std::int64_t i) {
  Image img;
  img.height = data.height;
  img.width = data.width;
  img.channels = data.channels;
  img.pixels.resize(static_cast<std::size_t>(data.sample_size()));
  const std::uint8_t* src = data.pixels.data() + i * data.sample_size();
  const std::int64_t plane = data.height * data.width;
  for (std::int64_t c = 0; c < data.channels; ++c)
    for (std::int64_t p = 0; p < plane; ++p) img.pixels[static_cast<std::size_t>(p * data.channels + c)] = src[c * plane + p];
  return img;
}

std::vector<std::uint8_t> encode(const Image& image, ImageCodec codec) {
  return codec == ImageCodec::png ? encode_png(image) : encode_jpeg(image, 95);
}

namespace {
const char* extension(ImageCodec codec) { return codec == ImageCodec::png ? "png" : "jpg"; }

void write_file(const fs::path& path, std::span<const std::uint8_t> bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  SHOAL_REQUIRE(f != nullptr, IoError, path.string() << ": cannot create (" << std::strerror(errno) << ")");
  const bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  SHOAL_REQUIRE(std::fclose(f) == 0 && ok, IoError, path.string() << ": write failed");
}

std::string number(std::int64_t i, int width = 6) {
  std::string s = std::to_string(i);
  return std::string(s.size() < static_cast<std::size_t>(width) ? width - s.size() : 0, '0') + s;
}
}  // namespace

void write_image_folder(const Dataset& data, const std::string& dir, ImageCodec codec,
                        const std::vector<std::string>& class_names) {
  for (std::int64_t c = 0; c < data.classes; ++c) {
    const std::string name = c < static_cast<std::int64_t>(class_names.size()) ? class_names[c] : std::to_string(c);
    fs::create_directories(fs::path(dir) / name);
  }
  for (std::int64_t i = 0; i < data.count; ++i) {
    const std::int32_t label = data.labels[static_cast<std::size_t>(i)];
    const std::string name =
        label < static_cast<std::int32_t>(class_names.size()) ? class_names[label] : std::to_string(label);
    write_file(fs::path(dir) / name / (number(i) + "." + extension(codec)), encode(sample_image(data, i), codec));
  }
}

std::vector<std::string> write_tar_shards(const Dataset& data, const std::string& prefix, std::int64_t per_shard,
                                          ImageCodec codec, std::uint64_t seed) {
  SHOAL_REQUIRE(per_shard > 0, ConfigError, "samples per shard must be positive");
  std::vector<std::int64_t> order(static_cast<std::size_t>(data.count));
  std::iota(order.begin(), order.end(), 0);
  Rng rng(seed);
  for (std::int64_t i = data.count - 1; i > 0; --i)
    std::swap(order[i], order[static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(i + 1)))]);
  fs::path parent = fs::path(prefix).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  std::vector<std::string> shards;
  for (std::int64_t first = 0, s = 0; first < data.count; first += per_shard, ++s) {
    shards.push_back(prefix + "-" + number(s) + ".tar");
    TarWriter tar(shards.back());
    for (std::int64_t k = first; k < std::min(data.count, first + per_shard); ++k) {
      const std::int64_t i = order[static_cast<std::size_t>(k)];
      const std::string key = number(i, 8);
      tar.add(key + "." + extension(codec), encode(sample_image(data, i), codec));
      const std::string label = std::to_string(data.labels[static_cast<std::size_t>(i)]);
      tar.add(key + ".cls", std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(label.data()), label.size()));
    }
    tar.close();
  }
  return shards;
}

TarWriter::TarWriter(const std::string& path) : path_(path), file_(std::fopen(path.c_str(), "wb")) {
  SHOAL_REQUIRE(file_ != nullptr, IoError, path << ": cannot create (" << std::strerror(errno) << ")");
}

TarWriter::~TarWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void TarWriter::add(const std::string& name, std::span<const std::uint8_t> bytes) {
  SHOAL_REQUIRE(name.size() < 100, InternalError, "TarWriter: name '" << name << "' is too long for ustar");
  std::uint8_t h[512] = {0};
  std::memcpy(h, name.data(), name.size());
  std::snprintf(reinterpret_cast<char*>(h + 100), 8, "%07o", 0644);
  std::snprintf(reinterpret_cast<char*>(h + 108), 8, "%07o", 0);
  std::snprintf(reinterpret_cast<char*>(h + 116), 8, "%07o", 0);
  std::snprintf(reinterpret_cast<char*>(h + 124), 12, "%011llo", static_cast<unsigned long long>(bytes.size()));
  std::snprintf(reinterpret_cast<char*>(h + 136), 12, "%011o", 0);
  h[156] = '0';
  std::memcpy(h + 257, "ustar\0" "00", 8);
  std::memset(h + 148, ' ', 8);
  unsigned sum = 0;
  for (std::uint8_t b : h) sum += b;
  std::snprintf(reinterpret_cast<char*>(h + 148), 8, "%06o", sum);
  h[155] = ' ';
  std::fwrite(h, 1, 512, file_);
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), file_);
  static const std::uint8_t zeros[512] = {0};
  std::fwrite(zeros, 1, (512 - bytes.size() % 512) % 512, file_);
}

void TarWriter::close() {
  static const std::uint8_t zeros[1024] = {0};
  std::fwrite(zeros, 1, sizeof(zeros), file_);
  const bool ok = std::ferror(file_) == 0;
  const int rc = std::fclose(file_);
  file_ = nullptr;
  SHOAL_REQUIRE(ok && rc == 0, IoError, path_ << ": write failed");
}

}  // namespace shoal
