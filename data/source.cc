#include "data/source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "base/error.h"
#include "data/image.h"
#include "data/shard.h"
#include "data/tar.h"
#include "data/transform.h"

namespace shoal {
namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kMaxFileBytes = std::int64_t{1} << 28;  // one image: 256 MiB
constexpr std::int64_t kMaxLabelBytes = 64;

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::vector<std::uint8_t> read_range(const std::string& path, std::int64_t offset, std::int64_t size,
                                     const std::string& name) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  SHOAL_REQUIRE(f.fd >= 0, DataError, name << ": cannot open (" << std::strerror(errno) << ")");
  if (size < 0) {
    struct stat st {};
    SHOAL_REQUIRE(::fstat(f.fd, &st) == 0 && S_ISREG(st.st_mode), DataError, name << ": not a regular file");
    size = st.st_size;
  }
  SHOAL_REQUIRE(size <= kMaxFileBytes, DataError,
                name << ": " << size << " bytes, above the limit of " << kMaxFileBytes << " for one image");
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(size));
  std::int64_t done = 0;
  while (done < size) {
    ssize_t got = ::pread(f.fd, bytes.data() + done, static_cast<std::size_t>(size - done), offset + done);
    if (got < 0 && errno == EINTR) continue;
    SHOAL_REQUIRE(got >= 0, DataError, name << ": read error (" << std::strerror(errno) << ")");
    SHOAL_REQUIRE(got > 0, DataError, name << ": truncated (file ended after " << done << " of " << size << " bytes)");
    done += got;
  }
  return bytes;
}

// Every `limit`-th share of the samples, spread evenly (a sorted folder listing is grouped by
// class: its first N samples would be one class).
template <typename T>
void keep_spread(std::vector<T>& v, std::int64_t limit) {
  const auto n = static_cast<std::int64_t>(v.size());
  if (limit <= 0 || limit >= n) return;
  std::vector<T> kept;
  kept.reserve(static_cast<std::size_t>(limit));
  for (std::int64_t i = 0; i < limit; ++i) kept.push_back(std::move(v[static_cast<std::size_t>(i * n / limit)]));
  v = std::move(kept);
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Problems found while indexing: fail throws, skip counts and names each once.
struct IndexIssues {
  OnBadSample mode;
  const Logger& log;
  std::int64_t skipped = 0;
  void bad(const std::string& what) {
    if (mode == OnBadSample::fail)
      throw DataError(what + " (data.on_bad_sample = skip passes over bad samples)");
    ++skipped;
    SHOAL_LOG(log, warn, "skipping bad sample: " << what);
  }
};

std::vector<fs::path> sorted_entries(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  SHOAL_REQUIRE(!ec, DataError, dir.string() << ": cannot read directory (" << ec.message() << ")");
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    SHOAL_REQUIRE(!ec, DataError, dir.string() << ": cannot read directory (" << ec.message() << ")");
    if (it->path().filename().string().starts_with(".")) continue;  // hidden files: .DS_Store, ...
    out.push_back(it->path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// DIR/<class>/<image>: the classes are `classes` when given (a test set takes the training
// set's), else the sorted subfolder names.
ImageSource::Index index_folder(const fs::path& dir, std::vector<std::string>* classes, IndexIssues& issues) {
  std::error_code ec;
  SHOAL_REQUIRE(fs::is_directory(dir, ec), DataError,
                dir.string() << ": no such directory (data.format = folder expects DIR/train/<class>/*.jpg|png and "
                                "DIR/val/<class>/... or DIR/test/<class>/...)");
  const bool given = !classes->empty();
  std::vector<std::pair<std::string, fs::path>> class_dirs;
  for (const fs::path& p : sorted_entries(dir)) {
    if (fs::is_directory(p, ec)) {
      class_dirs.emplace_back(p.filename().string(), p);
    } else {
      issues.bad(p.string() + ": a file where class folders are expected");
    }
  }
  SHOAL_REQUIRE(!class_dirs.empty(), DataError, dir.string() << ": no class folders");
  for (auto& [name, path] : class_dirs)
    SHOAL_REQUIRE(std::none_of(name.begin(), name.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20; }),
                  DataError, path.string() << ": a class folder name with a control character");
  if (!given)
    for (auto& [name, path] : class_dirs) classes->push_back(name);
  ImageSource::Index index;
  for (auto& [name, path] : class_dirs) {
    auto at = std::find(classes->begin(), classes->end(), name);
    SHOAL_REQUIRE(at != classes->end(), DataError,
                  path.string() << ": class '" << name << "' is not one of the training set's classes");
    const auto label = static_cast<std::int32_t>(at - classes->begin());
    std::int64_t images = 0;
    for (const fs::path& f : sorted_entries(path)) {
      const std::string file = f.string();
      if (!fs::is_regular_file(f, ec)) {
        issues.bad(file + ": not a regular file (class folders hold images only)");
      } else if (!is_image_name(f.filename().string())) {
        issues.bad(file + ": not an image file name (.jpg, .jpeg or .png)");
      } else {
        index.files.push_back(file);
        index.samples.push_back(ImageSample{static_cast<std::int32_t>(index.files.size() - 1), 0, -1, label, {}});
        ++images;
      }
    }
    if (images == 0) {
      SHOAL_REQUIRE(issues.mode == OnBadSample::skip, DataError, path.string() << ": empty class folder (no images)");
      SHOAL_LOG(issues.log, warn, path.string() << ": empty class folder (no images)");
    }
  }
  return index;
}

// The key of a WebDataset member: its path up to the first dot of its file name.
std::pair<std::string, std::string> split_key(const std::string& member) {
  const auto slash = member.rfind('/');
  const auto dot = member.find('.', slash == std::string::npos ? 0 : slash + 1);
  if (dot == std::string::npos) return {member, ""};
  return {member.substr(0, dot), lower(member.substr(dot + 1))};
}

bool parse_label(const std::vector<std::uint8_t>& bytes, std::int64_t* out) {
  std::string s(bytes.begin(), bytes.end());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  if (i == s.size() || s.size() - i > 9) return false;
  std::int64_t v = 0;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

// A sample is the members sharing a key: one image (jpg, jpeg, png) and its class (cls).
// `classes` is the class count when known (> 0); the labels found are returned unchecked
// otherwise, and max_label says how many classes they need.
ImageSource::Index index_tars(const std::vector<std::string>& shards, std::int64_t classes, IndexIssues& issues,
                              std::int64_t* max_label) {
  ImageSource::Index index;
  *max_label = -1;
  for (const std::string& shard : shards) {
    const auto file = static_cast<std::int32_t>(index.files.size());
    index.files.push_back(shard);
    std::vector<TarMember> members = list_tar(shard);
    std::size_t i = 0;
    while (i < members.size()) {
      const std::string key = split_key(members[i].name).first;
      const TarMember *image = nullptr, *cls = nullptr;
      for (; i < members.size() && split_key(members[i].name).first == key; ++i) {
        const std::string ext = split_key(members[i].name).second;
        if (ext == "jpg" || ext == "jpeg" || ext == "png") {
          if (image != nullptr) issues.bad(shard + ": sample '" + key + "' has two images");
          image = &members[i];
        } else if (ext == "cls") {
          cls = &members[i];
        }
      }
      if (image == nullptr && cls == nullptr) continue;  // other members (json, txt) of no sample
      if (image == nullptr) {
        issues.bad(shard + ": member " + cls->name + " has no image beside it (" + key + ".jpg or .png)");
        continue;
      }
      if (cls == nullptr) {
        issues.bad(shard + ": member " + image->name + " has no class member " + key + ".cls");
        continue;
      }
      std::int64_t label = -1;
      if (cls->size > kMaxLabelBytes ||
          !parse_label(read_range(shard, cls->offset, cls->size, shard + ": member " + cls->name), &label)) {
        issues.bad(shard + ": member " + cls->name + " does not hold a class index (a non-negative integer as text)");
        continue;
      }
      if (classes > 0 && label >= classes) {
        issues.bad(shard + ": member " + cls->name + " holds class " + std::to_string(label) + ", not below the " +
                   std::to_string(classes) + " classes");
        continue;
      }
      *max_label = std::max(*max_label, label);
      index.samples.push_back(
          ImageSample{file, image->offset, image->size, static_cast<std::int32_t>(label), image->name});
    }
    index.group_ends.push_back(static_cast<std::int64_t>(index.samples.size()));
  }
  return index;
}

std::vector<std::string> read_class_names(const std::string& path) {
  std::ifstream in(path);
  SHOAL_REQUIRE(in, DataError, path << ": cannot open");
  std::vector<std::string> names;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  SHOAL_REQUIRE(!names.empty(), DataError, path << ": no class names");
  return names;
}

fs::path folder_split(const DataSpec& spec, bool train) {
  fs::path root(spec.dir);
  if (train) return root / "train";
  std::error_code ec;
  if (fs::is_directory(root / "val", ec)) return root / "val";
  return root / "test";
}

struct Indexed {
  ImageSource::Index train, test;
  std::vector<std::string> classes;
  bool has_test = false;
};

Indexed index_images(const DataSpec& spec, const Logger& log, bool with_test) {
  Indexed out;
  IndexIssues issues{spec.on_bad_sample, log};
  if (spec.format == DataFormat::folder) {
    out.train = index_folder(folder_split(spec, true), &out.classes, issues);
    if (with_test) out.test = index_folder(folder_split(spec, false), &out.classes, issues);
  } else {
    SHOAL_REQUIRE(!spec.train.empty(), ConfigError,
                  "data.format = tar needs data.train (e.g. /data/train-{000000..000127}.tar)");
    std::vector<std::string> shards = expand_shards(spec.train);
    std::int64_t classes = spec.classes;
    const fs::path names = fs::path(shards.front()).parent_path() / "classes.txt";
    std::error_code ec;
    if (fs::exists(names, ec)) {
      out.classes = read_class_names(names.string());
      SHOAL_REQUIRE(classes == 0 || classes == static_cast<std::int64_t>(out.classes.size()), ConfigError,
                    "data.classes = " << classes << " but " << names.string() << " names " << out.classes.size()
                                      << " classes");
      classes = static_cast<std::int64_t>(out.classes.size());
    }
    std::int64_t max_label = -1;
    out.train = index_tars(shards, classes, issues, &max_label);
    if (classes == 0) classes = max_label + 1;
    if (out.classes.empty())
      for (std::int64_t c = 0; c < classes; ++c) out.classes.push_back(std::to_string(c));
    if (with_test) {
      SHOAL_REQUIRE(!spec.test.empty(), ConfigError,
                    "data.format = tar needs data.test (e.g. /data/test-{000000..000007}.tar)");
      out.test = index_tars(expand_shards(spec.test), classes, issues, &max_label);
    }
  }
  SHOAL_REQUIRE(!out.train.samples.empty(), DataError, "the training set has no samples");
  SHOAL_REQUIRE(out.classes.size() >= 2, DataError,
                "the training set has " << out.classes.size() << " class; a classifier needs at least 2");
  if (issues.skipped > 0)
    SHOAL_LOG(log, warn, issues.skipped << " bad samples left out of the index (data.on_bad_sample = skip)");
  keep_spread(out.train.samples, spec.train_limit);
  if (with_test) keep_spread(out.test.samples, spec.test_limit);
  if (spec.train_limit > 0) {  // tar groups after the spread: recount
    out.train.group_ends.clear();
    for (std::size_t i = 0; i < out.train.samples.size(); ++i)
      if (i + 1 == out.train.samples.size() || out.train.samples[i + 1].file != out.train.samples[i].file)
        out.train.group_ends.push_back(static_cast<std::int64_t>(i + 1));
  }
  return out;
}

// The shape every sample takes: spec.channels / spec.size, else the first training image's.
void image_shape(const DataSpec& spec, const ImageSource::Index& train, std::int64_t* c, std::int64_t* h,
                 std::int64_t* w) {
  ImageHeader header;
  // The first image that can be read (on_bad_sample = skip passes over the ones that cannot).
  for (std::size_t i = 0; i < train.samples.size(); ++i) {
    const ImageSample& s = train.samples[i];
    const std::string& file = train.files[static_cast<std::size_t>(s.file)];
    const std::string name = s.member.empty() ? file : file + ": member " + s.member;
    try {
      header = read_image_header(read_range(file, s.offset, s.size, name), name);
      break;
    } catch (const DataError&) {
      if (spec.on_bad_sample == OnBadSample::fail || i + 1 == train.samples.size()) throw;
    }
  }
  *c = spec.channels > 0 ? spec.channels : (header.gray ? 1 : 3);
  *h = spec.size > 0 ? spec.size : header.height;
  *w = spec.size > 0 ? spec.size : header.width;
}

}  // namespace

std::vector<std::string> expand_shards(const std::string& patterns) {
  std::vector<std::string> out;
  std::size_t at = 0;
  while (at <= patterns.size()) {
    std::size_t comma = patterns.find(',', at);
    // A comma inside braces belongs to the braces.
    std::size_t open = patterns.find('{', at);
    if (open != std::string::npos && open < comma) comma = patterns.find(',', patterns.find('}', open));
    std::string item = patterns.substr(at, comma == std::string::npos ? std::string::npos : comma - at);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) {
      std::vector<std::string> expanded{item};
      for (bool changed = true; changed;) {
        changed = false;
        std::vector<std::string> next;
        for (const std::string& s : expanded) {
          std::size_t b = s.find('{');
          if (b == std::string::npos) {
            next.push_back(s);
            continue;
          }
          std::size_t e = s.find('}', b);
          SHOAL_REQUIRE(e != std::string::npos, ConfigError, "data shards '" << s << "': '{' without '}'");
          std::string inner = s.substr(b + 1, e - b - 1);
          std::size_t dots = inner.find("..");
          SHOAL_REQUIRE(dots != std::string::npos, ConfigError,
                        "data shards '" << s << "': braces hold a range like {000000..000127}");
          std::string lo = inner.substr(0, dots), hi = inner.substr(dots + 2);
          bool digits = !lo.empty() && !hi.empty() && lo.size() <= 12 && hi.size() <= 12;
          for (char ch : lo + hi) digits = digits && ch >= '0' && ch <= '9';
          SHOAL_REQUIRE(digits, ConfigError, "data shards '" << s << "': '" << inner << "' is not a range of numbers");
          const std::int64_t a = std::stoll(lo), z = std::stoll(hi);
          SHOAL_REQUIRE(a <= z && z - a < 1000000, ConfigError, "data shards '" << s << "': empty or huge range");
          for (std::int64_t k = a; k <= z; ++k) {
            std::string num = std::to_string(k);
            if (num.size() < lo.size()) num = std::string(lo.size() - num.size(), '0') + num;
            next.push_back(s.substr(0, b) + num + s.substr(e + 1));
          }
          changed = true;
        }
        expanded = std::move(next);
      }
      out.insert(out.end(), expanded.begin(), expanded.end());
    }
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  SHOAL_REQUIRE(!out.empty(), ConfigError, "data shards '" << patterns << "' name no file");
  return out;
}

std::vector<std::int64_t> DataSource::epoch_order(std::uint64_t seed, std::int64_t epoch) const {
  return epoch_permutation(count(), seed, epoch);
}

MemorySource::MemorySource(Dataset data, Normalization norm) : data_(std::move(data)), norm_(std::move(norm)) {
  info_.count = data_.count;
  info_.channels = data_.channels;
  info_.height = data_.height;
  info_.width = data_.width;
  info_.classes = data_.classes;
  name_ = data_.name;
}

bool MemorySource::load(std::int64_t i, const SampleContext&, float* x, std::int32_t* y) const {
  gather_batch(data_, norm_, std::span<const std::int64_t>(&i, 1), x, y);
  return true;
}

ImageSource::ImageSource(std::string name, Index index, const DataSpec& spec, std::vector<std::string> class_names,
                         Logger log, std::int64_t channels, std::int64_t height, std::int64_t width)
    : index_(std::move(index)), spec_(spec), log_(std::move(log)), norm_(identity_normalization(channels)) {
  name_ = std::move(name);
  info_.count = static_cast<std::int64_t>(index_.samples.size());
  info_.channels = channels;
  info_.height = height;
  info_.width = width;
  info_.classes = static_cast<std::int64_t>(class_names.size());
  info_.class_names = std::move(class_names);
}

std::vector<std::int64_t> ImageSource::epoch_order(std::uint64_t seed, std::int64_t epoch) const {
  if (spec_.format == DataFormat::tar)
    return grouped_epoch_permutation(index_.group_ends, std::max<std::int64_t>(1, spec_.shuffle_buffer), seed, epoch);
  return DataSource::epoch_order(seed, epoch);
}

std::string ImageSource::sample_name(std::int64_t i) const {
  const ImageSample& s = index_.samples[static_cast<std::size_t>(i)];
  const std::string& file = index_.files[static_cast<std::size_t>(s.file)];
  return s.member.empty() ? file : file + ": member " + s.member;
}

std::vector<std::uint8_t> ImageSource::read_bytes(std::int64_t i) const {
  const ImageSample& s = index_.samples[static_cast<std::size_t>(i)];
  return read_range(index_.files[static_cast<std::size_t>(s.file)], s.offset, s.size, sample_name(i));
}

bool ImageSource::bad(std::int64_t i, const std::string& what) const {
  if (spec_.on_bad_sample == OnBadSample::fail) throw DataError(what);
  skipped_.fetch_add(1);
  std::lock_guard<std::mutex> lock(named_mu_);
  if (named_.insert(i).second) SHOAL_LOG(log_, warn, "skipping bad sample: " << what);
  return false;
}

bool ImageSource::load(std::int64_t i, const SampleContext& ctx, float* x, std::int32_t* y) const {
  return load_with(i, ctx, norm_, x, y);
}

bool ImageSource::load_with(std::int64_t i, const SampleContext& ctx, const Normalization& norm, float* x,
                            std::int32_t* y) const {
  SHOAL_ASSERT(i >= 0 && i < count(), "sample " << i << " outside data set of " << count());
  try {
    const std::string name = sample_name(i);
    std::vector<std::uint8_t> bytes = read_bytes(i);
    ImageHeader header = read_image_header(bytes, name);
    if (spec_.size <= 0 && (header.height != info_.height || header.width != info_.width))
      SHOAL_THROW(DataError, name << ": image is " << header.width << "x" << header.height << ", the data set's are "
                                  << info_.width << "x" << info_.height
                                  << " (set data.size to resize and crop every image to one size)");
    Rng rng = sample_rng(ctx.seed, ctx.epoch, i);
    TransformPlan plan = plan_transform(spec_, ctx.train, header.height, header.width, ctx.train ? &rng : nullptr);
    std::int64_t min_h = 0, min_w = 0;
    min_decode_size(plan, header.height, header.width, &min_h, &min_w);
    Image image = decode_image(bytes, static_cast<int>(info_.channels), name, min_h, min_w);
    render_transform(image, plan, header.height, header.width, norm, x);
    *y = index_.samples[static_cast<std::size_t>(i)].label;
    return true;
  } catch (const DataError& e) {
    return bad(i, e.what());
  }
}

Normalization ImageSource::measure(std::int64_t samples) const {
  const std::int64_t n = std::min(samples, count());
  const std::int64_t C = info_.channels, plane = info_.height * info_.width;
  std::vector<double> sum(static_cast<std::size_t>(C)), sum_sq(static_cast<std::size_t>(C));
  std::vector<float> x(static_cast<std::size_t>(sample_size()));
  const Normalization raw = identity_normalization(C);  // pixel / 255
  std::int64_t used = 0;
  for (std::int64_t k = 0; k < n; ++k) {
    std::int32_t y = 0;
    if (!load_with(k * count() / n, SampleContext{}, raw, x.data(), &y)) continue;
    ++used;
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t j = 0; j < plane; ++j) {
        const double v = x[static_cast<std::size_t>(c * plane + j)];
        sum[c] += v;
        sum_sq[c] += v * v;
      }
  }
  Normalization norm;
  for (std::int64_t c = 0; c < C; ++c) {
    const double count_c = static_cast<double>(std::max<std::int64_t>(1, used * plane));
    const double mean = sum[c] / count_c;
    norm.mean.push_back(static_cast<float>(mean));
    norm.stddev.push_back(static_cast<float>(std::sqrt(std::max(sum_sq[c] / count_c - mean * mean, 1e-12))));
  }
  return norm;
}

const char* data_format_name(DataFormat format) {
  switch (format) {
    case DataFormat::idx: return "idx";
    case DataFormat::cifar10: return "cifar10";
    case DataFormat::folder: return "folder";
    case DataFormat::tar: return "tar";
  }
  return "?";
}

DataSources open_data(const DataSpec& spec, const Logger& log) {
  DataSources out;
  if (!spec.images()) {
    TrainTestData data = load_train_test(data_format_name(spec.format), spec.dir, spec.train_limit, spec.test_limit);
    Normalization norm = spec.normalize ? compute_normalization(data.train) : identity_normalization(data.train.channels);
    if (!spec.mean.empty()) norm = Normalization{{spec.mean.begin(), spec.mean.end()}, {spec.stddev.begin(), spec.stddev.end()}};
    SHOAL_REQUIRE(static_cast<std::int64_t>(norm.mean.size()) == data.train.channels, ConfigError,
                  "data.mean has " << norm.mean.size() << " values, the data has " << data.train.channels
                                   << " channels");
    out.train = std::make_unique<MemorySource>(std::move(data.train), norm);
    out.test = std::make_unique<MemorySource>(std::move(data.test), norm);
    return out;
  }
  Indexed idx = index_images(spec, log, true);
  std::int64_t c = 0, h = 0, w = 0;
  image_shape(spec, idx.train, &c, &h, &w);
  const std::string where = spec.format == DataFormat::folder ? spec.dir : spec.train;
  auto train = std::make_unique<ImageSource>(where + " (train)", std::move(idx.train), spec, idx.classes, log, c, h, w);
  auto test = std::make_unique<ImageSource>(where + " (test)", std::move(idx.test), spec, idx.classes, log, c, h, w);
  Normalization norm = identity_normalization(c);
  if (!spec.mean.empty()) {
    SHOAL_REQUIRE(static_cast<std::int64_t>(spec.mean.size()) == c && static_cast<std::int64_t>(spec.stddev.size()) == c,
                  ConfigError,
                  "data.mean and data.std need " << c << " values each (one per channel), have " << spec.mean.size()
                                                 << " and " << spec.stddev.size());
    norm = Normalization{{spec.mean.begin(), spec.mean.end()}, {spec.stddev.begin(), spec.stddev.end()}};
  } else if (spec.normalize) {
    constexpr std::int64_t kMeasured = 1000;
    norm = train->measure(kMeasured);
    std::ostringstream m;
    for (std::size_t i = 0; i < norm.mean.size(); ++i)
      m << (i ? "," : "") << norm.mean[i];
    std::ostringstream s;
    for (std::size_t i = 0; i < norm.stddev.size(); ++i)
      s << (i ? "," : "") << norm.stddev[i];
    SHOAL_LOG(log, info, "data.mean/std not set: measured " << m.str() << " / " << s.str() << " on up to " << kMeasured
                                                            << " training images (set them, e.g. from `shoal data stats`, to skip this)");
  }
  train->set_normalization(norm);
  test->set_normalization(norm);
  SHOAL_LOG(log, info, "data: " << train->count() << " training and " << test->count() << " test images, "
                                << idx.classes.size() << " classes, " << c << "x" << h << "x" << w << " each");
  out.train = std::move(train);
  out.test = std::move(test);
  return out;
}

DatasetInfo probe_train_set(const DataSpec& spec, const Logger& log) {
  if (!spec.images()) return probe_train_set(data_format_name(spec.format), spec.dir, spec.train_limit);
  Indexed idx = index_images(spec, log, false);
  DatasetInfo info;
  image_shape(spec, idx.train, &info.channels, &info.height, &info.width);
  info.count = static_cast<std::int64_t>(idx.train.samples.size());
  info.classes = static_cast<std::int64_t>(idx.classes.size());
  info.class_names = idx.classes;
  return info;
}

}  // namespace shoal
