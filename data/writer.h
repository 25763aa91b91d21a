// Writes a data set held in memory (IDX, CIFAR-10) as image files: a folder per class, or
// WebDataset-style tar shards (k.png|jpg + k.cls). `shoal data write`, the tests and the
// benchmarks make their image data sets with it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/image.h"

namespace shoal {

enum class ImageCodec { png, jpeg };

// Sample i of `data` as an image (CHW bytes to interleaved).
Image sample_image(const Dataset& data, std::int64_t i);
std::vector<std::uint8_t> encode(const Image& image, ImageCodec codec);

// DIR/<class>/<NNNNNN>.png|jpg, one folder per class (named by class_names, else the label).
void write_image_folder(const Dataset& data, const std::string& dir, ImageCodec codec,
                        const std::vector<std::string>& class_names = {});

// `prefix`-000000.tar, ... of `per_shard` samples each, in an order shuffled by `seed` (shards
// are read front to back, so a class-sorted source must be mixed when written). Returns the
// shard paths.
std::vector<std::string> write_tar_shards(const Dataset& data, const std::string& prefix, std::int64_t per_shard,
                                          ImageCodec codec, std::uint64_t seed);

// A ustar archive, written front to back.
class TarWriter {
 public:
  explicit TarWriter(const std::string& path);
  ~TarWriter();
  TarWriter(const TarWriter&) = delete;
  TarWriter& operator=(const TarWriter&) = delete;
  void add(const std::string& name, std::span<const std::uint8_t> bytes);
  void close();  // the two zero blocks; throws IoError if a write failed

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace shoal
