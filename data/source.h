// Where training and evaluation samples come from, as one interface the trainer reads through:
// in-memory data sets (IDX, CIFAR-10) and streamed image data sets (a folder per class, or tar
// shards), decoded and transformed one sample at a time. An image data set holds only its
// index (file names, tar offsets, labels) — never its pixels — so memory does not grow with it.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "base/log.h"
#include "data/dataset.h"
#include "data/spec.h"

namespace shoal {

// What one load is for: evaluation (the deterministic transform), or training in `epoch` (the
// random transform of (seed, epoch, sample)).
struct SampleContext {
  bool train = false;
  std::uint64_t seed = 0;
  std::int64_t epoch = 0;
};

class DataSource {
 public:
  virtual ~DataSource() = default;

  const DatasetInfo& info() const { return info_; }
  std::int64_t count() const { return info_.count; }
  std::int64_t sample_size() const { return info_.channels * info_.height * info_.width; }
  const std::string& name() const { return name_; }

  // The order an epoch visits the samples in (the same on every process).
  virtual std::vector<std::int64_t> epoch_order(std::uint64_t seed, std::int64_t epoch) const;

  // Writes sample i (sample_size() floats, normalised) to x and its label to *y. Safe to call
  // from several threads at once. A bad sample throws DataError naming it, or (with
  // data.on_bad_sample = skip) is counted and returns false.
  virtual bool load(std::int64_t i, const SampleContext& ctx, float* x, std::int32_t* y) const = 0;

  // Whether loading a sample costs enough (decoding) to be worth threads.
  virtual bool decodes() const { return false; }
  // The per-channel mean and std load() normalises with (pixel / 255 units): what an export
  // records as the model's evaluation transform. Empty for a source that does not normalise.
  virtual const Normalization& normalization() const {
    static const Normalization none;
    return none;
  }

  // Samples skipped since the last call (bad input under on_bad_sample = skip).
  std::int64_t take_skipped() { return skipped_.exchange(0); }

 protected:
  DatasetInfo info_;
  std::string name_;
  mutable std::atomic<std::int64_t> skipped_{0};
};

// An IDX or CIFAR-10 data set held in memory.
class MemorySource final : public DataSource {
 public:
  MemorySource(Dataset data, Normalization norm);
  bool load(std::int64_t i, const SampleContext& ctx, float* x, std::int32_t* y) const override;
  const Dataset& data() const { return data_; }
  const Normalization& normalization() const override { return norm_; }

 private:
  Dataset data_;
  Normalization norm_;
};

// One sample of an image data set: a whole file (folder) or a member of a tar shard.
struct ImageSample {
  std::int32_t file = 0;     // index into the file list
  std::int64_t offset = 0;   // tar: the member's first byte; folder: 0
  std::int64_t size = -1;    // tar: the member's length; folder: -1 (the whole file)
  std::int32_t label = 0;
  std::string member;        // tar: the image member's name
};

// A streamed image data set (data.format = folder or tar).
class ImageSource final : public DataSource {
 public:
  struct Index {
    std::vector<std::string> files;
    std::vector<ImageSample> samples;
    std::vector<std::int64_t> group_ends;  // tar: where each shard's samples end
  };
  // `shape_from` gives the channels and size when spec leaves them to the data (the training
  // set's first image); normalisation is set later (set_normalization).
  ImageSource(std::string name, Index index, const DataSpec& spec, std::vector<std::string> class_names, Logger log,
              std::int64_t channels, std::int64_t height, std::int64_t width);

  std::vector<std::int64_t> epoch_order(std::uint64_t seed, std::int64_t epoch) const override;
  bool load(std::int64_t i, const SampleContext& ctx, float* x, std::int32_t* y) const override;
  bool decodes() const override { return true; }

  void set_normalization(Normalization norm) { norm_ = std::move(norm); }
  const Normalization& normalization() const override { return norm_; }
  const Index& index() const { return index_; }
  // The raw bytes of sample i (its file, or its member of a shard).
  std::vector<std::uint8_t> read_bytes(std::int64_t i) const;
  std::string sample_name(std::int64_t i) const;
  // Per-channel mean and std (pixel / 255) of up to `samples` samples through the evaluation
  // transform, spread evenly over the data set.
  Normalization measure(std::int64_t samples) const;

 private:
  bool bad(std::int64_t i, const std::string& what) const;
  bool load_with(std::int64_t i, const SampleContext& ctx, const Normalization& norm, float* x, std::int32_t* y) const;

  Index index_;
  DataSpec spec_;
  Logger log_;
  Normalization norm_;
  mutable std::mutex named_mu_;
  mutable std::set<std::int64_t> named_;  // bad samples already named in the log
};

struct DataSources {
  std::unique_ptr<DataSource> train, test;
};

// Opens the training and test sets of `spec`: reads an in-memory data set, or indexes an image
// data set (listing folders, reading tar headers) and sets its normalisation (spec.mean/std,
// else measured from the training set). Problems are DataErrors naming the file.
DataSources open_data(const DataSpec& spec, const Logger& log);

// The training set's size, shape and classes without reading samples (the coordinator and the
// parameter servers plan from it).
DatasetInfo probe_train_set(const DataSpec& spec, const Logger& log);

// "DIR/train-{000..127}.tar,other.tar" -> the paths, in order (brace ranges keep their width).
std::vector<std::string> expand_shards(const std::string& patterns);

}  // namespace shoal
