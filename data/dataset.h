// Datasets held in memory as raw bytes (uint8 pixels, int32 labels) and turned into normalised
// float batches on demand. Readers for IDX (MNIST, Fashion-MNIST; raw or gzip) and the CIFAR-10
// binary format check every file: magic numbers, dimensions, counts, sizes and label ranges. A
// bad file is a DataError naming the file and what is wrong.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace shoal {

struct Dataset {
  std::string name;  // e.g. "fashion-mnist train"
  std::int64_t count = 0;
  std::int64_t channels = 0, height = 0, width = 0;
  std::int64_t classes = 10;
  std::vector<std::uint8_t> pixels;  // count x channels x height x width
  std::vector<std::int32_t> labels;  // count

  std::int64_t sample_size() const { return channels * height * width; }
};

struct Normalization {
  std::vector<float> mean, stddev;  // per channel, in pixel units / 255
};

// Reads an IDX image file and label file pair (each raw or gzip). limit > 0 keeps the first
// `limit` samples.
Dataset read_idx(const std::string& images_path, const std::string& labels_path, std::int64_t limit = 0);

// Reads CIFAR-10 binary batch files (records of 1 label byte + 3072 pixel bytes).
Dataset read_cifar10(const std::vector<std::string>& paths, std::int64_t limit = 0);

struct TrainTestData {
  Dataset train, test;
};

// Finds and reads the standard file names in `dir` for format "idx" or "cifar10".
TrainTestData load_train_test(const std::string& format, const std::string& dir, std::int64_t train_limit,
                              std::int64_t test_limit);

// Sample count and shape of the training set, from the file headers alone (the coordinator
// plans shards and the partition table without loading the data).
struct DatasetInfo {
  std::int64_t count = 0, channels = 0, height = 0, width = 0, classes = 10;
  std::vector<std::string> class_names;  // image data sets: the class folders or classes.txt
};
DatasetInfo probe_train_set(const std::string& format, const std::string& dir, std::int64_t limit);

Normalization compute_normalization(const Dataset& data);
Normalization identity_normalization(std::int64_t channels);  // x / 255

// Fills x (indices.size() x sample_size floats) and y with the given samples.
void gather_batch(const Dataset& data, const Normalization& norm, std::span<const std::int64_t> indices, float* x,
                  std::int32_t* y);

}  // namespace shoal
