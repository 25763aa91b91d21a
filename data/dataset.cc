#include "data/dataset.h"

#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <memory>

#include "base/error.h"

namespace shoal {
namespace {

constexpr std::size_t kMaxFileBytes = std::size_t{8} << 30;  // refuse absurd headers before allocating

// Reads a whole file, transparently gunzipping; `max_bytes` bounds decompression (one byte more
// is read so that trailing garbage is detected by the caller).
std::vector<std::uint8_t> read_maybe_gzip(const std::string& path, std::size_t max_bytes) {
  SHOAL_REQUIRE(std::filesystem::is_regular_file(path), DataError, path << ": no such file");
  gzFile file = gzopen(path.c_str(), "rb");
  SHOAL_REQUIRE(file != nullptr, DataError, path << ": cannot open");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> guard(file, gzclose);
  gzbuffer(file, 1 << 20);
  std::vector<std::uint8_t> bytes;
  std::size_t chunk = 1 << 20;
  while (bytes.size() < max_bytes) {
    std::size_t want = std::min(chunk, max_bytes - bytes.size());
    std::size_t old = bytes.size();
    bytes.resize(old + want);
    int got = gzread(file, bytes.data() + old, static_cast<unsigned>(want));
    if (got < 0) {
      int err = 0;
      const char* msg = gzerror(file, &err);
      SHOAL_THROW(DataError, path << ": corrupt compressed data (" << msg << ")");
    }
    bytes.resize(old + static_cast<std::size_t>(got));
    if (static_cast<std::size_t>(got) < want) {
      int err = 0;
      const char* msg = gzerror(file, &err);
      SHOAL_REQUIRE(err == Z_OK || err == Z_STREAM_END, DataError,
                    path << ": corrupt or truncated compressed data (" << msg << ")");
      break;
    }
  }
  return bytes;
}

std::uint32_t big_endian_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}

struct IdxFile {
  std::vector<std::uint32_t> dims;
  std::vector<std::uint8_t> bytes;  // header included
  std::size_t header = 0;
};

IdxFile read_idx_file(const std::string& path, std::size_t expected_rank) {
  // First the header alone, to know how many bytes to expect.
  auto head = read_maybe_gzip(path, 4 + 4 * expected_rank);
  SHOAL_REQUIRE(head.size() >= 4, DataError,
                path << ": file too short for an IDX header (" << head.size() << " bytes)");
  SHOAL_REQUIRE(
      head[0] == 0 && head[1] == 0, DataError,
      path << ": bad IDX magic number (first bytes " << int(head[0]) << ", " << int(head[1]) << "; expected 0, 0)");
  SHOAL_REQUIRE(
      head[2] == 0x08, DataError,
      path << ": IDX element type 0x" << std::hex << int(head[2]) << std::dec << " is not unsigned byte (0x08)");
  SHOAL_REQUIRE(head[3] == expected_rank, DataError,
                path << ": IDX file has " << int(head[3]) << " dimensions, expected " << expected_rank);
  SHOAL_REQUIRE(head.size() == 4 + 4 * expected_rank, DataError, path << ": truncated IDX header");
  IdxFile idx;
  idx.header = head.size();
  std::size_t payload = 1;
  for (std::size_t d = 0; d < expected_rank; ++d) {
    std::uint32_t dim = big_endian_u32(head.data() + 4 + 4 * d);
    SHOAL_REQUIRE(dim > 0 && dim <= (1u << 30), DataError, path << ": dimension " << d << " is " << dim);
    idx.dims.push_back(dim);
    payload *= dim;
    SHOAL_REQUIRE(payload <= kMaxFileBytes, DataError, path << ": dimensions describe more than 8 GiB");
  }
  std::size_t expected = idx.header + payload;
  idx.bytes = read_maybe_gzip(path, expected + 1);
  SHOAL_REQUIRE(
      idx.bytes.size() >= expected, DataError,
      path << ": truncated: header promises " << payload << " data bytes, file has " << idx.bytes.size() - idx.header);
  SHOAL_REQUIRE(idx.bytes.size() == expected, DataError,
                path << ": unexpected bytes after the " << payload << " data bytes the header promises");
  return idx;
}

void check_labels(const Dataset& d, const std::string& path) {
  for (std::size_t i = 0; i < d.labels.size(); ++i)
    SHOAL_REQUIRE(d.labels[i] >= 0 && d.labels[i] < d.classes, DataError,
                  path << ": label " << d.labels[i] << " of sample " << i << " is outside 0.." << d.classes - 1);
}

std::string first_existing(const std::string& dir, const std::string& name) {
  for (const char* suffix : {"", ".gz"}) {
    std::string path = (std::filesystem::path(dir) / (name + suffix)).string();
    if (std::filesystem::exists(path)) return path;
  }
  SHOAL_THROW(DataError, "dataset file " << name << "[.gz] not found in '" << dir << "'");
}

}  // namespace

Dataset read_idx(const std::string& images_path, const std::string& labels_path, std::int64_t limit) {
  IdxFile images = read_idx_file(images_path, 3);
  IdxFile labels = read_idx_file(labels_path, 1);
  SHOAL_REQUIRE(images.dims[0] == labels.dims[0], DataError,
                images_path << " holds " << images.dims[0] << " images but " << labels_path << " holds "
                            << labels.dims[0] << " labels");
  Dataset d;
  d.name = std::filesystem::path(images_path).filename().string();
  d.count = images.dims[0];
  if (limit > 0 && limit < d.count) d.count = limit;
  d.channels = 1;
  d.height = images.dims[1];
  d.width = images.dims[2];
  auto first = images.bytes.begin() + static_cast<std::ptrdiff_t>(images.header);
  d.pixels.assign(first, first + d.count * d.sample_size());
  d.labels.resize(static_cast<std::size_t>(d.count));
  for (std::int64_t i = 0; i < d.count; ++i) d.labels[i] = labels.bytes[labels.header + i];
  check_labels(d, labels_path);
  return d;
}

Dataset read_cifar10(const std::vector<std::string>& paths, std::int64_t limit) {
  constexpr std::size_t kRecord = 1 + 3 * 32 * 32;
  Dataset d;
  d.name = "cifar10";
  d.channels = 3;
  d.height = d.width = 32;
  for (const auto& path : paths) {
    auto bytes = read_maybe_gzip(path, kMaxFileBytes);
    SHOAL_REQUIRE(!bytes.empty(), DataError, path << ": empty file");
    SHOAL_REQUIRE(bytes.size() % kRecord == 0, DataError,
                  path << ": size " << bytes.size() << " is not a whole number of " << kRecord
                       << "-byte CIFAR-10 records (truncated?)");
    for (std::size_t r = 0; r < bytes.size() / kRecord; ++r) {
      if (limit > 0 && d.count >= limit) break;
      const std::uint8_t* rec = bytes.data() + r * kRecord;
      SHOAL_REQUIRE(rec[0] < 10, DataError,
                    path << ": record " << r << " has label " << int(rec[0]) << " (expected 0..9)");
      d.labels.push_back(rec[0]);
      d.pixels.insert(d.pixels.end(), rec + 1, rec + kRecord);
      ++d.count;
    }
  }
  return d;
}

TrainTestData load_train_test(const std::string& format, const std::string& dir, std::int64_t train_limit,
                              std::int64_t test_limit) {
  TrainTestData data;
  if (format == "idx") {
    data.train = read_idx(first_existing(dir, "train-images-idx3-ubyte"),
                          first_existing(dir, "train-labels-idx1-ubyte"), train_limit);
    data.test = read_idx(first_existing(dir, "t10k-images-idx3-ubyte"), first_existing(dir, "t10k-labels-idx1-ubyte"),
                         test_limit);
  } else if (format == "cifar10") {
    std::string base = dir;
    if (std::filesystem::exists(std::filesystem::path(dir) / "cifar-10-batches-bin"))
      base = (std::filesystem::path(dir) / "cifar-10-batches-bin").string();
    std::vector<std::string> train_files;
    for (int i = 1; i <= 5; ++i)
      train_files.push_back(first_existing(base, "data_batch_" + std::to_string(i) + ".bin"));
    data.train = read_cifar10(train_files, train_limit);
    data.test = read_cifar10({first_existing(base, "test_batch.bin")}, test_limit);
  } else {
    SHOAL_THROW(ConfigError, "data.format = '" << format << "' is not one of: idx, cifar10");
  }
  data.train.name += " (train)";
  data.test.name += " (test)";
  SHOAL_REQUIRE(data.train.sample_size() == data.test.sample_size(), DataError,
                "training samples are " << data.train.channels << "x" << data.train.height << "x" << data.train.width
                                        << " but test samples are " << data.test.channels << "x" << data.test.height
                                        << "x" << data.test.width);
  return data;
}

DatasetInfo probe_train_set(const std::string& format, const std::string& dir, std::int64_t limit) {
  DatasetInfo info;
  if (format == "idx") {
    std::string images = first_existing(dir, "train-images-idx3-ubyte");
    auto head = read_maybe_gzip(images, 16);
    SHOAL_REQUIRE(head.size() == 16 && head[0] == 0 && head[1] == 0 && head[2] == 0x08 && head[3] == 3, DataError,
                  images << ": not an IDX image file");
    info.count = big_endian_u32(head.data() + 4);
    info.channels = 1;
    info.height = big_endian_u32(head.data() + 8);
    info.width = big_endian_u32(head.data() + 12);
  } else if (format == "cifar10") {
    std::string base = dir;
    if (std::filesystem::exists(std::filesystem::path(dir) / "cifar-10-batches-bin"))
      base = (std::filesystem::path(dir) / "cifar-10-batches-bin").string();
    for (int i = 1; i <= 5; ++i)
      info.count += static_cast<std::int64_t>(
          std::filesystem::file_size(first_existing(base, "data_batch_" + std::to_string(i) + ".bin")) / 3073);
    info.channels = 3;
    info.height = info.width = 32;
  } else {
    SHOAL_THROW(ConfigError, "data.format = '" << format << "' is not one of: idx, cifar10");
  }
  SHOAL_REQUIRE(info.count > 0 && info.height > 0 && info.width > 0, DataError,
                "training set in '" << dir << "' is empty");
  if (limit > 0 && limit < info.count) info.count = limit;
  return info;
}

Normalization compute_normalization(const Dataset& data) {
  Normalization n;
  std::int64_t plane = data.height * data.width;
  for (std::int64_t c = 0; c < data.channels; ++c) {
    double sum = 0, sum_sq = 0;
    for (std::int64_t i = 0; i < data.count; ++i) {
      const std::uint8_t* p = data.pixels.data() + i * data.sample_size() + c * plane;
      for (std::int64_t j = 0; j < plane; ++j) {
        double v = p[j] / 255.0;
        sum += v;
        sum_sq += v * v;
      }
    }
    double count = static_cast<double>(data.count * plane);
    double mean = count > 0 ? sum / count : 0;
    double var = count > 0 ? sum_sq / count - mean * mean : 1;
    n.mean.push_back(static_cast<float>(mean));
    n.stddev.push_back(static_cast<float>(std::sqrt(std::max(var, 1e-12))));
  }
  return n;
}

Normalization identity_normalization(std::int64_t channels) {
  return Normalization{std::vector<float>(channels, 0.f), std::vector<float>(channels, 1.f)};
}

void gather_batch(const Dataset& data, const Normalization& norm, std::span<const std::int64_t> indices, float* x,
                  std::int32_t* y) {
  std::int64_t plane = data.height * data.width, size = data.sample_size();
  for (std::size_t b = 0; b < indices.size(); ++b) {
    std::int64_t i = indices[b];
    SHOAL_ASSERT(i >= 0 && i < data.count, "sample " << i << " outside dataset of " << data.count);
    const std::uint8_t* src = data.pixels.data() + i * size;
    float* dst = x + static_cast<std::int64_t>(b) * size;
    for (std::int64_t c = 0; c < data.channels; ++c) {
      float scale = 1.f / (255.f * norm.stddev[c]), shift = norm.mean[c] / norm.stddev[c];
      for (std::int64_t j = 0; j < plane; ++j) dst[c * plane + j] = src[c * plane + j] * scale - shift;
    }
    y[b] = data.labels[i];
  }
}

}  // namespace shoal
