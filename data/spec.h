// What a job says about its data: the format and where it lives, the transforms for training
// and evaluation, normalisation, the decode threads and the prefetch window, and what a bad
// sample does. Filled from the data.* settings (config/config.h); the data layer knows nothing
// of the configuration registry.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shoal {

enum class DataFormat { idx, cifar10, folder, tar };
enum class TrainCrop { none, center, random_resized };
enum class OnBadSample { fail, skip };

const char* data_format_name(DataFormat format);

struct DataSpec {
  DataFormat format = DataFormat::idx;
  // idx, cifar10: the folder with the standard file names. folder: the root holding train/ and
  // val/ (or test/), a subfolder per class.
  std::string dir = "/usr/share/datasets/fashion-mnist";
  // tar: the training and test shards, "DIR/train-{000000..000127}.tar" (brace ranges) or a
  // comma-separated list of paths and patterns.
  std::string train, test;
  std::int64_t train_limit = 0, test_limit = 0;  // 0: every sample
  std::int64_t classes = 0;                      // tar: the class count (0: classes.txt, else the largest label + 1)

  // Images (folder, tar).
  std::int64_t channels = 0;  // 1 or 3; 0: 1 when the first training image is grayscale, else 3
  std::int64_t size = 0;      // output side in pixels; 0: the first training image's (all must match)
  std::int64_t resize = 0;    // evaluation: the shorter side before the centre crop; 0: `size`
  TrainCrop train_crop = TrainCrop::none;
  double crop_scale_min = 0.08, crop_scale_max = 1.0;         // random_resized: area fraction
  double crop_ratio_min = 3.0 / 4.0, crop_ratio_max = 4.0 / 3.0;  // random_resized: aspect ratio
  bool flip = false;                                           // training: random horizontal flip

  bool normalize = true;
  std::vector<double> mean, stddev;  // per channel, pixel / 255; empty: measured from the training set

  std::int64_t threads = 2;          // decode threads (images); 0: decode on the training thread
  std::int64_t prefetch = 4;         // ready batches held ahead of the training step
  std::int64_t shuffle_buffer = 1024;  // tar: samples shuffled together within a shard
  OnBadSample on_bad_sample = OnBadSample::fail;

  bool images() const { return format == DataFormat::folder || format == DataFormat::tar; }
};

}  // namespace shoal
