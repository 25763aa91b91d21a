#include "config/config.h"

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <map>
#include <regex>
#include <sstream>
#include <vector>

#include "base/error.h"
#include "models/model_file.h"

extern char** environ;

namespace shoal {
namespace po = boost::program_options;

namespace {

std::string trim(const std::string& s) {
  std::size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::int64_t parse_int(const std::string& key, const std::string& text) {
  std::string t = trim(text);
  std::int64_t value = 0;
  auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), value);
  SHOAL_REQUIRE(ec == std::errc() && ptr == t.data() + t.size() && !t.empty(), ConfigError,
                key << ": '" << text << "' is not an integer");
  return value;
}

double parse_float(const std::string& key, const std::string& text) {
  std::string t = trim(text);
  char* end = nullptr;
  errno = 0;
  double value = std::strtod(t.c_str(), &end);
  SHOAL_REQUIRE(!t.empty() && end == t.c_str() + t.size() && errno == 0 && std::isfinite(value), ConfigError,
                key << ": '" << text << "' is not a finite number");
  return value;
}

bool parse_bool(const std::string& key, const std::string& text) {
  std::string t = trim(text);
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  SHOAL_THROW(ConfigError, key << ": '" << text << "' is not a boolean (true/false)");
}

std::string format_float(double v) {
  std::ostringstream out;
  out << std::setprecision(7) << v;  // float fields print as written
  return out.str();
}

template <typename T>
std::string range_text(T lo, T hi) {
  std::ostringstream out;
  out << '[' << lo << ", " << hi << ']';
  return out.str();
}

// Builders: an accessor returns a reference to the field inside a JobConfig.
template <typename Access>
Setting int_setting(std::string key, Access access, std::int64_t lo, std::int64_t hi, std::string help) {
  Setting s;
  s.key = key;
  s.kind = "int";
  s.range = range_text(lo, hi);
  s.help = std::move(help);
  s.set = [=](JobConfig& c, const std::string& text) {
    std::int64_t v = parse_int(key, text);
    SHOAL_REQUIRE(v >= lo && v <= hi, ConfigError, key << " = " << v << " is out of range " << range_text(lo, hi));
    access(c) = static_cast<std::remove_reference_t<decltype(access(c))>>(v);
  };
  s.get = [=](const JobConfig& c) { return std::to_string(access(const_cast<JobConfig&>(c))); };
  return s;
}

template <typename Access>
Setting float_setting(std::string key, Access access, double lo, double hi, bool lo_open, std::string help) {
  Setting s;
  s.key = key;
  s.kind = "float";
  s.range = (lo_open ? "(" : "[") + format_float(lo) + ", " + format_float(hi) + "]";
  s.help = std::move(help);
  std::string range = s.range;
  s.set = [=](JobConfig& c, const std::string& text) {
    double v = parse_float(key, text);
    bool ok = (lo_open ? v > lo : v >= lo) && v <= hi;
    SHOAL_REQUIRE(ok, ConfigError, key << " = " << text << " is out of range " << range);
    access(c) = static_cast<std::remove_reference_t<decltype(access(c))>>(v);
  };
  s.get = [=](const JobConfig& c) { return format_float(access(const_cast<JobConfig&>(c))); };
  return s;
}

template <typename Access>
Setting bool_setting(std::string key, Access access, std::string help) {
  Setting s;
  s.key = key;
  s.kind = "bool";
  s.help = std::move(help);
  s.set = [=](JobConfig& c, const std::string& text) { access(c) = parse_bool(key, text); };
  s.get = [=](const JobConfig& c) { return std::string(access(const_cast<JobConfig&>(c)) ? "true" : "false"); };
  return s;
}

template <typename Access>
Setting string_setting(std::string key, Access access, std::string help) {
  Setting s;
  s.key = key;
  s.kind = "string";
  s.help = std::move(help);
  s.set = [=](JobConfig& c, const std::string& text) { access(c) = trim(text); };
  s.get = [=](const JobConfig& c) { return access(const_cast<JobConfig&>(c)); };
  return s;
}

// A comma-separated list of finite numbers (empty: none).
template <typename Access>
Setting floats_setting(std::string key, Access access, std::string help) {
  Setting s;
  s.key = key;
  s.kind = "floats";
  s.help = std::move(help);
  s.set = [=](JobConfig& c, const std::string& text) {
    std::vector<double> values;
    const std::string t = trim(text);
    std::size_t at = 0;
    while (!t.empty() && at <= t.size()) {
      std::size_t comma = t.find(',', at);
      values.push_back(parse_float(key, t.substr(at, comma == std::string::npos ? std::string::npos : comma - at)));
      if (comma == std::string::npos) break;
      at = comma + 1;
    }
    access(c) = values;
  };
  s.get = [=](const JobConfig& c) {
    std::string out;
    for (double v : access(const_cast<JobConfig&>(c))) {
      if (!out.empty()) out += ',';
      out += format_float(v);
    }
    return out;
  };
  return s;
}

// A mode: the value's name is checked against `choices` and stored as its enum.
template <typename E, typename Access>
Setting enum_setting(std::string key, Access access, std::vector<std::pair<std::string, E>> choices, std::string help) {
  Setting s;
  s.key = key;
  for (std::size_t i = 0; i < choices.size(); ++i) s.kind += (i ? " \\| " : "") + choices[i].first;
  s.help = std::move(help);
  s.set = [=](JobConfig& c, const std::string& text) {
    const std::string t = trim(text);
    for (const auto& [name, value] : choices) {
      if (t == name) {
        access(c) = value;
        return;
      }
    }
    std::string list;
    for (std::size_t i = 0; i < choices.size(); ++i) list += (i ? ", " : "") + choices[i].first;
    SHOAL_THROW(ConfigError, key << " = '" << text << "' is not one of: " << list);
  };
  s.get = [=](const JobConfig& c) {
    for (const auto& [name, value] : choices)
      if (access(const_cast<JobConfig&>(c)) == value) return name;
    return std::string("?");
  };
  return s;
}

// A setting whose value is one of a few names, kept as the name.
template <typename Access>
Setting choice_setting(std::string key, Access access, const std::vector<std::string>& choices, std::string help) {
  std::vector<std::pair<std::string, std::string>> named;
  for (const auto& choice : choices) named.emplace_back(choice, choice);
  return enum_setting<std::string>(std::move(key), access, std::move(named), std::move(help));
}

// What one key cannot check alone.
void check_data_spec(const DataSpec& d) {
  SHOAL_REQUIRE(d.channels != 2, ConfigError, "data.channels = 2: use 1 (grayscale) or 3 (RGB)");
  SHOAL_REQUIRE(d.crop_scale_min <= d.crop_scale_max, ConfigError,
                "data.crop_scale_min = " << d.crop_scale_min << " is above data.crop_scale_max = " << d.crop_scale_max);
  SHOAL_REQUIRE(d.crop_ratio_min <= d.crop_ratio_max, ConfigError,
                "data.crop_ratio_min = " << d.crop_ratio_min << " is above data.crop_ratio_max = " << d.crop_ratio_max);
  SHOAL_REQUIRE(d.train_crop == TrainCrop::none || d.size > 0, ConfigError,
                "data.train_crop = " << (d.train_crop == TrainCrop::center ? "center" : "random_resized")
                                     << " needs data.size (the side of the crop)");
  SHOAL_REQUIRE(d.resize == 0 || d.size > 0, ConfigError, "data.resize needs data.size (the side of the centre crop)");
  SHOAL_REQUIRE(d.resize == 0 || d.resize >= d.size, ConfigError,
                "data.resize = " << d.resize << " is smaller than data.size = " << d.size);
  SHOAL_REQUIRE(
      d.mean.size() == d.stddev.size(), ConfigError,
      "data.mean has " << d.mean.size() << " values and data.std " << d.stddev.size() << " (one per channel)");
  for (double v : d.stddev) SHOAL_REQUIRE(v > 0, ConfigError, "data.std = " << v << ": every value must be above 0");
  SHOAL_REQUIRE(d.mean.empty() || d.mean.size() == 1 || d.mean.size() == 3, ConfigError,
                "data.mean has " << d.mean.size() << " values: one per channel (1 or 3)");
}

}  // namespace

const char* strategy_name(StrategyKind kind) { return kind == StrategyKind::sync ? "sync" : "async"; }

const char* sync_backend_name(SyncBackend backend) {
  switch (backend) {
    case SyncBackend::mpi:
      return "mpi";
    case SyncBackend::gloo:
      return "gloo";
    case SyncBackend::nccl:
      return "nccl";
    case SyncBackend::auto_select:
      break;
  }
  return "auto";
}

SettingsRegistry::SettingsRegistry() {
  constexpr std::int64_t kBig = 1'000'000'000'000LL;
  auto& s = settings_;
  {
    Setting m;
    m.key = "model";
    for (const auto& name : zoo_names()) m.kind += (m.kind.empty() ? "" : " \\| ") + name;
    m.kind += " \\| FILE.yaml \\| FILE.onnx";
    m.help =
        "a model of the zoo, a model file (a path ending .yaml, or containing a /) or an ONNX file to start "
        "from (a path ending .onnx); docs/models.md";
    m.set = [](JobConfig& c, const std::string& text) {
      const std::string t = trim(text);
      if (!is_model_path(t) && zoo_text(t) == nullptr) {
        std::string list;
        for (const auto& name : zoo_names()) list += (list.empty() ? "" : ", ") + name;
        SHOAL_THROW(ConfigError, "model = '" << text << "' is not one of: " << list
                                             << " (nor a model file: a path ending .yaml, or an ONNX file: .onnx)");
      }
      c.model = t;
    };
    m.get = [](const JobConfig& c) { return c.model; };
    s.push_back(std::move(m));
  }

  s.push_back(enum_setting<DataFormat>(
      "data.format", [](JobConfig & c) -> auto& { return c.data.format; },
      {{"idx", DataFormat::idx},
       {"cifar10", DataFormat::cifar10},
       {"folder", DataFormat::folder},
       {"tar", DataFormat::tar}},
      "idx (MNIST, Fashion-MNIST), cifar10 (binary version), folder (DIR/train/<class>/*.jpg|png) or tar "
      "(WebDataset-style shards: k.jpg|png + k.cls); docs/data.md"));
  s.push_back(string_setting(
      "data.dir", [](JobConfig & c) -> auto& { return c.data.dir; },
      "idx, cifar10: folder with train-images-idx3-ubyte[.gz] etc. or data_batch_*.bin; folder: the root holding "
      "train/ and val/ (or test/), a subfolder per class"));
  s.push_back(string_setting(
      "data.train", [](JobConfig & c) -> auto& { return c.data.train; },
      "tar: the training shards, /data/train-{000000..000127}.tar (brace ranges) or a comma-separated list"));
  s.push_back(string_setting(
      "data.test", [](JobConfig & c) -> auto& { return c.data.test; }, "tar: the test shards, as data.train"));
  s.push_back(int_setting(
      "data.train_limit", [](JobConfig & c) -> auto& { return c.data.train_limit; }, 0, kBig,
      "use only N training samples (0: all): the first N of idx and cifar10, N spread evenly over an image data set"));
  s.push_back(int_setting(
      "data.test_limit", [](JobConfig & c) -> auto& { return c.data.test_limit; }, 0, kBig,
      "use only N test samples (0: all), as data.train_limit"));
  s.push_back(int_setting(
      "data.classes", [](JobConfig & c) -> auto& { return c.data.classes; }, 0, 1 << 24,
      "tar: the class count (0: the lines of classes.txt beside the first training shard, else the largest label + "
      "1)"));
  s.push_back(int_setting(
      "data.channels", [](JobConfig & c) -> auto& { return c.data.channels; }, 0, 3,
      "folder, tar: 1 (grayscale) or 3 (RGB); every image is converted (0: 1 if the first training image is gray, "
      "else 3)"));
  s.push_back(int_setting(
      "data.size", [](JobConfig & c) -> auto& { return c.data.size; }, 0, 4096,
      "folder, tar: the side of the square the transforms output (0: the first training image's size, and every "
      "image must have it)"));
  s.push_back(int_setting(
      "data.resize", [](JobConfig & c) -> auto& { return c.data.resize; }, 0, 8192,
      "folder, tar: evaluation (and train_crop = center) resizes the shorter side to this, then crops the centre "
      "data.size square (0: data.size)"));
  s.push_back(enum_setting<TrainCrop>(
      "data.train_crop", [](JobConfig & c) -> auto& { return c.data.train_crop; },
      {{"none", TrainCrop::none}, {"center", TrainCrop::center}, {"random_resized", TrainCrop::random_resized}},
      "folder, tar: the training crop; none and center: as evaluation; random_resized: torchvision's "
      "RandomResizedCrop(data.size, data.crop_scale, data.crop_ratio)"));
  s.push_back(float_setting(
      "data.crop_scale_min", [](JobConfig & c) -> auto& { return c.data.crop_scale_min; }, 0, 1, true,
      "random_resized: smallest crop area, as a fraction of the image"));
  s.push_back(float_setting(
      "data.crop_scale_max", [](JobConfig & c) -> auto& { return c.data.crop_scale_max; }, 0, 1, true,
      "random_resized: largest crop area, as a fraction of the image"));
  s.push_back(float_setting(
      "data.crop_ratio_min", [](JobConfig & c) -> auto& { return c.data.crop_ratio_min; }, 0, 100, true,
      "random_resized: smallest aspect ratio (width / height)"));
  s.push_back(float_setting(
      "data.crop_ratio_max", [](JobConfig & c) -> auto& { return c.data.crop_ratio_max; }, 0, 100, true,
      "random_resized: largest aspect ratio (width / height)"));
  s.push_back(bool_setting(
      "data.flip", [](JobConfig & c) -> auto& { return c.data.flip; },
      "folder, tar: training flips each image horizontally with probability 1/2"));
  s.push_back(bool_setting(
      "data.normalize", [](JobConfig & c) -> auto& { return c.data.normalize; },
      "normalise inputs per channel: data.mean and data.std, else the training set's (measured on up to 1000 "
      "images for folder and tar)"));
  s.push_back(floats_setting(
      "data.mean", [](JobConfig & c) -> auto& { return c.data.mean; },
      "per-channel mean of pixel / 255, comma-separated (empty: measured; `shoal data stats` prints it)"));
  s.push_back(floats_setting(
      "data.std", [](JobConfig & c) -> auto& { return c.data.stddev; },
      "per-channel standard deviation of pixel / 255, comma-separated (with data.mean)"));
  s.push_back(int_setting(
      "data.threads", [](JobConfig & c) -> auto& { return c.data.threads; }, 0, 256,
      "folder, tar: threads decoding and transforming images ahead of the training step (0: on the training "
      "thread)"));
  s.push_back(int_setting(
      "data.prefetch", [](JobConfig & c) -> auto& { return c.data.prefetch; }, 1, 1024,
      "folder, tar: ready batches held ahead of the step (memory: (prefetch + 1) x batch x sample)"));
  s.push_back(int_setting(
      "data.shuffle_buffer", [](JobConfig & c) -> auto& { return c.data.shuffle_buffer; }, 1, 1 << 24,
      "tar: each run of this many consecutive samples of a shard is shuffled (shards are shuffled too)"));
  s.push_back(enum_setting<OnBadSample>(
      "data.on_bad_sample", [](JobConfig & c) -> auto& { return c.data.on_bad_sample; },
      {{"fail", OnBadSample::fail}, {"skip", OnBadSample::skip}},
      "a corrupt, truncated, unlabelled or wrongly labelled sample: fail (exit 3, naming it) or skip (counted "
      "per epoch, named once in the log)"));

  s.push_back(int_setting(
      "train.epochs", [](JobConfig & c) -> auto& { return c.epochs; }, 1, 100000, "passes over the training set"));
  s.push_back(int_setting(
      "train.batch_size", [](JobConfig & c) -> auto& { return c.batch_size; }, 1, 65536,
      "samples per step (per worker in distributed jobs)"));
  s.push_back(int_setting(
      "train.accumulate", [](JobConfig & c) -> auto& { return c.accumulate; }, 1, 4096,
      "gradient accumulation: micro-batches of train.batch_size per optimizer step (sync: one all-reduce "
      "per step; async: one push)"));
  s.push_back(float_setting(
      "train.label_smoothing", [](JobConfig & c) -> auto& { return c.label_smoothing; }, 0, 0.999, false,
      "label smoothing e of the training loss: targets (1 - e) one-hot + e / classes"));
  s.push_back(int_setting(
      "train.eval_batch_size", [](JobConfig & c) -> auto& { return c.eval_batch_size; }, 1, 65536,
      "samples per forward pass when evaluating"));
  s.push_back(int_setting(
      "train.seed", [](JobConfig & c) -> auto& { return c.seed; }, 0, kBig,
      "seed for weights, shuffling and dropout: the same seed gives the same run"));

  s.push_back(choice_setting(
      "optimizer.name", [](JobConfig & c) -> auto& { return c.optimizer_name; }, {"sgd", "adam", "adamw"},
      "update rule; sgd uses optimizer.momentum"));
  s.push_back(float_setting(
      "optimizer.lr", [](JobConfig & c) -> auto& { return c.optimizer.lr; }, 0, 10, true, "base learning rate"));
  s.push_back(float_setting(
      "optimizer.momentum", [](JobConfig & c) -> auto& { return c.optimizer.momentum; }, 0, 0.999999, false,
      "sgd momentum (0: plain SGD)"));
  s.push_back(bool_setting(
      "optimizer.nesterov", [](JobConfig & c) -> auto& { return c.optimizer.nesterov; }, "Nesterov momentum (sgd)"));
  s.push_back(float_setting(
      "optimizer.weight_decay", [](JobConfig & c) -> auto& { return c.optimizer.weight_decay; }, 0, 1, false,
      "L2 penalty (decoupled for adamw)"));
  s.push_back(bool_setting(
      "optimizer.decay_bias_and_norm", [](JobConfig & c) -> auto& { return c.optimizer.decay_bias_and_norm; },
      "false: no weight decay on biases and normalisation parameters (every 1-D parameter)"));
  s.push_back(float_setting(
      "optimizer.clip_norm", [](JobConfig & c) -> auto& { return c.optimizer.clip_norm; }, 0, 1e9, false,
      "clip gradients to this global L2 norm (0: off); sync: after the all-reduce, async: on the worker"));
  s.push_back(float_setting(
      "optimizer.beta1", [](JobConfig & c) -> auto& { return c.optimizer.beta1; }, 0, 0.999999, false,
      "Adam first-moment decay"));
  s.push_back(float_setting(
      "optimizer.beta2", [](JobConfig & c) -> auto& { return c.optimizer.beta2; }, 0, 0.999999, false,
      "Adam second-moment decay"));
  s.push_back(float_setting(
      "optimizer.eps", [](JobConfig & c) -> auto& { return c.optimizer.eps; }, 0, 1, true, "Adam denominator epsilon"));

  s.push_back(enum_setting<LrScheduleKind>(
      "lr.schedule", [](JobConfig & c) -> auto& { return c.lr_schedule; },
      {{"constant", LrScheduleKind::constant}, {"step", LrScheduleKind::step}, {"cosine", LrScheduleKind::cosine}},
      "learning-rate schedule after warm-up"));
  s.push_back(float_setting(
      "lr.warmup_epochs", [](JobConfig & c) -> auto& { return c.warmup_epochs; }, 0, 1000, false,
      "linear warm-up length in epochs (fractions allowed)"));
  s.push_back(float_setting(
      "lr.step_epochs", [](JobConfig & c) -> auto& { return c.step_epochs; }, 0, 100000, true,
      "step schedule: multiply by lr.gamma every this many epochs"));
  s.push_back(float_setting(
      "lr.gamma", [](JobConfig & c) -> auto& { return c.lr_gamma; }, 0, 1, true, "step schedule: decay factor"));
  s.push_back(float_setting(
      "lr.min", [](JobConfig & c) -> auto& { return c.lr_min; }, 0, 10, false, "cosine schedule: final learning rate"));

  s.push_back(int_setting(
      "data.shard_size", [](JobConfig & c) -> auto& { return c.shard_size; }, 1, kBig,
      "distributed jobs: samples per data shard the coordinator leases to a worker"));

  s.push_back(string_setting(
      "cluster.coordinator", [](JobConfig & c) -> auto& { return c.coordinator_address; },
      "ZeroMQ address of the coordinator (it binds there; everyone else connects)"));
  s.push_back(int_setting(
      "cluster.servers", [](JobConfig & c) -> auto& { return c.servers; }, 1, 1024,
      "parameter servers the job waits for before it starts"));
  s.push_back(int_setting(
      "cluster.workers", [](JobConfig & c) -> auto& { return c.workers; }, 1, 4096,
      "workers the job waits for before it starts"));
  s.push_back(float_setting(
      "cluster.heartbeat_seconds", [](JobConfig & c) -> auto& { return c.heartbeat_seconds; }, 0.01, 3600, false,
      "how often every process tells the coordinator it is alive"));
  s.push_back(float_setting(
      "cluster.dead_after_seconds", [](JobConfig & c) -> auto& { return c.dead_after_seconds; }, 0.05, 86400, false,
      "a process silent this long is declared dead"));
  s.push_back(float_setting(
      "cluster.request_timeout_seconds", [](JobConfig & c) -> auto& { return c.request_timeout_seconds; }, 0.1, 86400,
      false, "longest wait for any reply (pulls included) before a TimeoutError"));
  s.push_back(float_setting(
      "cluster.startup_timeout_seconds", [](JobConfig & c) -> auto& { return c.startup_timeout_seconds; }, 0.1, 86400,
      false, "how long the coordinator waits for all servers and workers to register"));
  s.push_back(float_setting(
      "cluster.stall_seconds", [](JobConfig & c) -> auto& { return c.stall_seconds; }, 0, 1e9, false,
      "async jobs: a worker that holds work and is the slowest, but has not finished a step for this long (a "
      "hung device) while its heartbeats go on, is treated as dead (0: never)"));
  s.push_back(float_setting(
      "cluster.coordinator_grace_seconds", [](JobConfig & c) -> auto& { return c.coordinator_grace_seconds; }, 0, 86400,
      false,
      "async jobs with checkpoint.dir: how long servers and workers keep working without the coordinator while a "
      "restarted one takes the job over (0: they exit once it is silent for cluster.dead_after_seconds)"));
  s.push_back(float_setting(
      "cluster.lease_timeout_seconds", [](JobConfig & c) -> auto& { return c.lease_timeout_seconds; }, 0.1, 86400,
      false, "a leased data shard not finished in this time goes back to the queue"));
  s.push_back(string_setting(
      "checkpoint.dir", [](JobConfig & c) -> auto& { return c.checkpoint_dir; },
      "folder of the job's checkpoints, shared by every process (empty: no checkpoints)"));
  s.push_back(int_setting(
      "checkpoint.every_steps", [](JobConfig & c) -> auto& { return c.checkpoint_every_steps; }, 0, kBig,
      "take a checkpoint every this many global steps (batches trained by any worker; 0: not by steps)"));
  s.push_back(float_setting(
      "checkpoint.every_seconds", [](JobConfig & c) -> auto& { return c.checkpoint_every_seconds; }, 0, 1e9, false,
      "take a checkpoint every this many seconds (0: not by time)"));
  s.push_back(int_setting(
      "checkpoint.keep", [](JobConfig & c) -> auto& { return c.checkpoint_keep; }, 1, 1 << 20,
      "complete checkpoints kept; older ones are removed"));
  s.push_back(string_setting(
      "checkpoint.resume", [](JobConfig & c) -> auto& { return c.checkpoint_resume; },
      "auto: resume from checkpoint.dir/LATEST when there is one (falling back to the newest intact one); "
      "never: start afresh; or the path of one checkpoint directory"));
  s.push_back(float_setting(
      "checkpoint.on_term_older_than", [](JobConfig & c) -> auto& { return c.checkpoint_on_term_older_than; }, 0, 1e9,
      false, "on SIGTERM, the coordinator takes a last checkpoint when the newest is older than this (seconds)"));
  s.push_back(bool_setting(
      "launch.restart_workers", [](JobConfig & c) -> auto& { return c.launch_restart_workers; },
      "shoal launch --local: restart a worker that died (a dead parameter server is always restarted)"));
  s.push_back(int_setting(
      "launch.max_restarts", [](JobConfig & c) -> auto& { return c.launch_max_restarts; }, 0, 1 << 20,
      "shoal launch --local: restarts per process (and of a sync world, from its last checkpoint) before the job is "
      "given up"));
  s.push_back(int_setting(
      "node.rank", [](JobConfig & c) -> auto& { return c.node_rank; }, -1, 1 << 20,
      "this process's rank within its role (-1: the coordinator assigns one)"));
  s.push_back(int_setting(
      "node.local_rank", [](JobConfig & c) -> auto& { return c.node_local_rank; }, -1, 1 << 20,
      "workers: rank among the processes on this host, which picks the GPU (-1: from "
      "OMPI_COMM_WORLD_LOCAL_RANK or LOCAL_RANK when set)"));
  s.push_back(string_setting(
      "node.address", [](JobConfig & c) -> auto& { return c.node_address; },
      "parameter servers: ZeroMQ address to listen on (port 0: any free port)"));
  s.push_back(bool_setting(
      "node.rank_from_hostname", [](JobConfig & c) -> auto& { return c.node_rank_from_hostname; },
      "ps and workers: take node.rank from this host name's ordinal suffix (a StatefulSet's pod shoal-ps-3 is "
      "rank 3), for clusters without the apps.kubernetes.io/pod-index label (docs/deploy-gke.md)"));
  s.push_back(string_setting(
      "node.advertise", [](JobConfig & c) -> auto& { return c.node_advertise; },
      "parameter servers bound to every interface (node.address tcp://0.0.0.0:P or tcp://*:P): the host name or "
      "address workers connect to, with the bound port (empty: this host's fully qualified name, e.g. a "
      "StatefulSet pod's shoal-ps-0.shoal-ps.NAMESPACE.svc.cluster.local)"));
  s.push_back(enum_setting<StrategyKind>(
      "strategy", [](JobConfig & c) -> auto& { return c.strategy; },
      {{"async", StrategyKind::async}, {"sync", StrategyKind::sync}},
      "async: parameter servers, bounded staleness (docs/async-training.md); sync: every worker holds "
      "the model and gradients are all-reduced (docs/sync-training.md)"));
  s.push_back(enum_setting<SyncBackend>(
      "sync.backend", [](JobConfig & c) -> auto& { return c.sync_backend; },
      {{"auto", SyncBackend::auto_select},
       {"mpi", SyncBackend::mpi},
       {"gloo", SyncBackend::gloo},
       {"nccl", SyncBackend::nccl}},
      "sync jobs: the collective library; auto picks nccl on GPUs, mpi under mpirun, gloo otherwise"));
  s.push_back(float_setting(
      "sync.bucket_mib", [](JobConfig & c) -> auto& { return c.bucket_mib; }, 0.001, 65536, false,
      "sync jobs: gradients are all-reduced in buckets of this many MiB, each as soon as backward filled it"));
  s.push_back(enum_setting<BatchNormMode>(
      "sync.batch_norm", [](JobConfig & c) -> auto& { return c.sync_batch_norm; },
      {{"local", BatchNormMode::local}, {"sync", BatchNormMode::sync}},
      "sync jobs: batch-norm statistics of each rank's own batch (local) or of the global batch (sync: "
      "the same result as one process with the whole batch)"));
  s.push_back(float_setting(
      "sync.timeout_seconds", [](JobConfig & c) -> auto& { return c.sync_timeout_seconds; }, 0.1, 86400, false,
      "sync jobs: longest wait for one collective operation (or for forming the world) before the job fails"));
  s.push_back(bool_setting(
      "sync.elastic", [](JobConfig & c) -> auto& { return c.sync_elastic; },
      "sync jobs with gloo: when a rank other than 0 dies, the others form a smaller world in place and go on, and "
      "a rank that registers in the place of a missing one joins at a step boundary (docs/sync-training.md, "
      "\"Elasticity\"); false: the job fails with the lost rank's name"));
  s.push_back(string_setting(
      "sync.interface", [](JobConfig & c) -> auto& { return c.sync_interface; },
      "sync jobs with gloo: the network interface to bind (empty: the address this host reaches the "
      "coordinator from; 127.0.0.1 when the coordinator is on loopback)"));
  s.push_back(int_setting(
      "async.staleness", [](JobConfig & c) -> auto& { return c.staleness; }, 0, 1 << 20,
      "bounded staleness: a worker may be this many steps ahead of the slowest (0: synchronous, "
      "gradients averaged)"));
  s.push_back(enum_setting<LrStaleness>(
      "async.lr_staleness", [](JobConfig & c) -> auto& { return c.lr_staleness; },
      {{"none", LrStaleness::none}, {"inverse", LrStaleness::inverse}},
      "async jobs: scale each update by 1 / (1 + t), t = updates other workers made to the chunk since this "
      "gradient's worker pulled it (inverse; docs/async-training.md), or not (none)"));
  s.push_back(int_setting(
      "async.chunk_kib", [](JobConfig & c) -> auto& { return c.chunk_kib; }, 1, 1 << 20,
      "largest chunk a parameter tensor is cut into for the servers, in KiB"));
  s.push_back(int_setting(
      "async.max_in_flight", [](JobConfig & c) -> auto& { return c.max_in_flight; }, 1, 1024,
      "most unacknowledged pushes per server a worker keeps in flight"));

  s.push_back(int_setting(
      "threads", [](JobConfig & c) -> auto& { return c.threads; }, 0, 4096,
      "compute threads per process (0: the CPUs it may use: its affinity mask and its cgroup's CPU quota, rounded "
      "up; `shoal version` prints the count)"));
  s.push_back(choice_setting(
      "device", [](JobConfig & c) -> auto& { return c.device; }, {"auto", "cpu", "cuda"},
      "where to compute; auto picks cuda when a GPU and the CUDA backend are available (a process's GPU is its "
      "local rank modulo the GPUs it sees)"));
  s.push_back(bool_setting(
      "cuda.tf32", [](JobConfig & c) -> auto& { return c.cuda_tf32; },
      "TF32 tensor cores for convolutions and matrix products on the GPU (false: full FP32)"));
  s.push_back(string_setting(
      "auth.keys", [](JobConfig & c) -> auto& { return c.auth_keys; },
      "directory of the job's CURVE keys (shoal keys generate): only members holding them may connect, each as the "
      "member its key is (empty: no authentication; docs/authentication.md)"));
  s.push_back(enum_setting<JobEndAction>(
      "cluster.on_job_end", [](JobConfig & c) -> auto& { return c.on_job_end; },
      {{"exit", JobEndAction::exit}, {"wait", JobEndAction::wait}},
      "what a coordinator, server or worker does once the job is over: exit 0, or wait (serving its status "
      "endpoint) until SIGTERM, then exit 0, so a StatefulSet does not restart a finished job's pods"));
  s.push_back(choice_setting(
      "log.level", [](JobConfig & c) -> auto& { return c.log_level; }, {"debug", "info", "warn", "error", "off"},
      "least severe log level printed"));
  s.push_back(string_setting(
      "metrics.file", [](JobConfig & c) -> auto& { return c.metrics_file; },
      "append metrics as JSON lines to this file (empty: none)"));
  s.push_back(int_setting(
      "metrics.port", [](JobConfig & c) -> auto& { return c.metrics_port; }, -1, 65535,
      "serve /healthz, /readyz and Prometheus /metrics over HTTP on this port (-1: none; 0: any free port, logged)"));
  s.push_back(string_setting(
      "metrics.host", [](JobConfig & c) -> auto& { return c.metrics_host; },
      "address the HTTP status endpoint listens on (0.0.0.0: every interface; 127.0.0.1: this host only)"));
  s.push_back(string_setting(
      "serve.name", [](JobConfig & c) -> auto& { return c.serve.name; },
      "shoal serve: the model's name in the URLs (/v2/models/NAME, /v1/models/NAME; empty: the model's own name)"));
  s.push_back(int_setting(
      "serve.port", [](JobConfig & c) -> auto& { return c.serve.port; }, 0, 65535,
      "shoal serve: the HTTP port (0: any free port, logged); when not set, the PORT environment variable (Cloud "
      "Run's) if present"));
  s.push_back(string_setting(
      "serve.host", [](JobConfig & c) -> auto& { return c.serve.host; },
      "shoal serve: the address to listen on (0.0.0.0: every interface)"));
  s.push_back(int_setting(
      "serve.max_batch", [](JobConfig & c) -> auto& { return c.serve.max_batch; }, 1, 65536,
      "shoal serve: most samples run through the model in one call (dynamic batching)"));
  s.push_back(int_setting(
      "serve.max_delay_us", [](JobConfig & c) -> auto& { return c.serve.max_delay_us; }, 0, 10000000,
      "shoal serve: how long the oldest waiting request may wait for others to batch with, in microseconds"));
  s.push_back(bool_setting(
      "serve.always_wait", [](JobConfig & c) -> auto& { return c.serve.always_wait; },
      "shoal serve: the oldest request always waits serve.max_delay_us for others (false: only while requests "
      "arrive together, so a lone request runs at once)"));
  s.push_back(int_setting(
      "serve.queue", [](JobConfig & c) -> auto& { return c.serve.queue; }, 1, 1 << 20,
      "shoal serve: inference requests waiting at most; beyond it a request is answered 429 with Retry-After"));
  s.push_back(float_setting(
      "serve.timeout_seconds", [](JobConfig & c) -> auto& { return c.serve.timeout_seconds; }, 0, 3600, true,
      "shoal serve: a request that has not started running this long after it arrived is answered 504"));
  s.push_back(int_setting(
      "serve.max_body_mib", [](JobConfig & c) -> auto& { return c.serve.max_body_mib; }, 1, 4096,
      "shoal serve: largest request body in MiB; a larger one is answered 413 unread"));
  s.push_back(float_setting(
      "serve.drain_seconds", [](JobConfig & c) -> auto& { return c.serve.drain_seconds; }, 0, 3600, false,
      "shoal serve: on SIGTERM, not ready at once, then requests in flight are answered and it exits 0 within this"));
  s.push_back(float_setting(
      "serve.poll_seconds", [](JobConfig & c) -> auto& { return c.serve.poll_seconds; }, 0, 3600, true,
      "shoal serve: serving a checkpoint.dir, how often its LATEST is read for a newer checkpoint to swap in"));
  s.push_back(int_setting(
      "serve.http_threads", [](JobConfig & c) -> auto& { return c.serve.http_threads; }, 1, 256,
      "shoal serve: threads that parse requests and write answers (the model runs on `threads` compute threads)"));
  s.push_back(enum_setting<ProgressSetting>(
      "progress", [](JobConfig & c) -> auto& { return c.progress; },
      {{"auto", ProgressSetting::auto_detect},
       {"bar", ProgressSetting::bar},
       {"lines", ProgressSetting::lines},
       {"off", ProgressSetting::off}},
      "progress display: a live line on a terminal, plain lines otherwise (auto)"));
}

const Setting* SettingsRegistry::find(const std::string& key) const {
  for (const auto& s : settings_)
    if (s.key == key) return &s;
  return nullptr;
}

std::string SettingsRegistry::env_name(const std::string& key) {
  std::string name = "SHOAL_";
  for (char c : key) name += (c == '.') ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

std::string SettingsRegistry::help_text() const {
  JobConfig defaults;
  std::ostringstream out;
  out << "Job settings (INI file keys; override with --key=value or SHOAL_KEY=value):\n";
  for (const auto& s : settings_) {
    std::string kind = s.kind;
    for (std::size_t p; (p = kind.find("\\|")) != std::string::npos;) kind.replace(p, 2, "|");
    out << "  --" << std::left << std::setw(24) << s.key << " " << s.help << "\n"
        << "    " << std::setw(24) << "" << kind << (s.range.empty() ? "" : " " + s.range) << ", default '"
        << s.get(defaults) << "'\n";
  }
  return out.str();
}

std::string SettingsRegistry::markdown_table() const {
  JobConfig defaults;
  std::ostringstream out;
  out << "| key | type | default | environment | meaning |\n| --- | --- | --- | --- | --- |\n";
  for (const auto& s : settings_) {
    std::string value = s.get(defaults);
    out << "| `" << s.key << "` | " << s.kind << (s.range.empty() ? "" : " " + s.range) << " | "
        << (value.empty() ? std::string("*(empty)*") : "`" + value + "`") << " | `" << env_name(s.key) << "` | "
        << s.help << " |\n";
  }
  return out.str();
}

std::string LoadedConfig::describe(const SettingsRegistry& registry) const {
  std::ostringstream out;
  for (const auto& s : registry.settings()) {
    auto it = sources.find(s.key);
    out << "  " << std::left << std::setw(24) << s.key << " = " << std::setw(20) << s.get(config) << " ("
        << (it == sources.end() ? "default" : it->second) << ")\n";
  }
  return out.str();
}

bool is_kubernetes_service_link(const std::string& name, const std::string& value) {
  // Kubernetes gives every container variables for each Service of its namespace (unless the
  // pod sets enableServiceLinks: false). A Service named `shoal-coordinator` yields
  // SHOAL_COORDINATOR_SERVICE_HOST, _SERVICE_PORT, _SERVICE_PORT_<NAME>, _PORT,
  // _PORT_<N>_<PROTO> and _PORT_<N>_<PROTO>_{PROTO,PORT,ADDR}. Both the name and the value must
  // have the generated form, so a typo of a setting (SHOAL_TRAIN_EPOCHZ=3) is still refused.
  static const std::regex host(R"(SHOAL(_[A-Z0-9_]+)?_SERVICE_HOST)"),
      service_port(R"(SHOAL(_[A-Z0-9_]+)?_SERVICE_PORT(_[A-Z0-9_]+)?)"),
      url(R"(SHOAL(_[A-Z0-9_]+)?_PORT(_[0-9]+_(TCP|UDP|SCTP))?)"),
      proto(R"(SHOAL(_[A-Z0-9_]+)?_PORT_[0-9]+_(TCP|UDP|SCTP)_PROTO)"),
      port(R"(SHOAL(_[A-Z0-9_]+)?_PORT_[0-9]+_(TCP|UDP|SCTP)_PORT)"),
      addr(R"(SHOAL(_[A-Z0-9_]+)?_PORT_[0-9]+_(TCP|UDP|SCTP)_ADDR)");
  static const std::regex ip(R"([0-9]{1,3}(\.[0-9]{1,3}){3}|[0-9a-fA-F:]*:[0-9a-fA-F:.]*)"), number(R"([0-9]{1,5})"),
      endpoint(R"((tcp|udp|sctp)://([0-9]{1,3}(\.[0-9]{1,3}){3}|\[?[0-9a-fA-F:]*:[0-9a-fA-F:.]*\]?):[0-9]{1,5})"),
      protocol(R"(tcp|udp|sctp)");
  if (std::regex_match(name, host) || std::regex_match(name, addr)) return std::regex_match(value, ip);
  if (std::regex_match(name, service_port) || std::regex_match(name, port)) return std::regex_match(value, number);
  if (std::regex_match(name, proto)) return std::regex_match(value, protocol);
  if (std::regex_match(name, url)) return std::regex_match(value, endpoint);
  return false;
}

namespace {

// Edit distance with transpositions (optimal string alignment), capped: enough to tell a typo.
std::size_t typo_distance(const std::string& a, const std::string& b) {
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
  for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= n; ++i)
    for (std::size_t j = 1; j <= m; ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

std::string without_underscores(std::string s) {
  s.erase(std::remove(s.begin(), s.end(), '_'), s.end());
  return s;
}

}  // namespace

namespace {

bool is_job_wide(const std::string& key) {
  auto starts = [&](const char* prefix) { return key.rfind(prefix, 0) == 0; };
  if (key == "model" || key == "strategy" || key == "cluster.servers" || key == "checkpoint.every_steps") return true;
  if (starts("data."))  // the paths may be mounted elsewhere; threads and prefetch are the process's
    return key != "data.dir" && key != "data.train" && key != "data.test" && key != "data.threads" &&
           key != "data.prefetch";
  if (starts("train.") || starts("optimizer.") || starts("lr.")) return true;
  return key == "sync.backend" || key == "sync.bucket_mib" || key == "sync.batch_norm" || key == "sync.elastic" ||
         key == "async.staleness" || key == "async.lr_staleness" || key == "async.chunk_kib";
}

// "key = value" lines in the order they were written.
std::vector<std::pair<std::string, std::string>> settings_lines(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find(" = ");
    if (eq != std::string::npos) lines.emplace_back(line.substr(0, eq), line.substr(eq + 3));
  }
  return lines;
}

}  // namespace

std::string job_settings_text(const JobConfig& config, const SettingsRegistry& registry) {
  std::string text;
  for (const auto& s : registry.settings())
    if (is_job_wide(s.key)) text += s.key + " = " + s.get(config) + "\n";
  return text;
}

std::uint64_t settings_digest(const std::string& text) {
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

std::string first_setting_difference(const std::string& mine, const std::string& theirs, const std::string& where) {
  const auto a = settings_lines(mine), b = settings_lines(theirs);
  const std::map<std::string, std::string> mine_by_key(a.begin(), a.end()), theirs_by_key(b.begin(), b.end());
  auto value = [](const std::map<std::string, std::string>& m, const std::string& key) {
    auto it = m.find(key);
    return it == m.end() ? std::string("(not a setting)") : "'" + it->second + "'";
  };
  // In the order this process wrote them (the registry's), then the ones only the other has.
  std::vector<std::string> keys;
  for (const auto& [key, v] : a)
    if (auto it = theirs_by_key.find(key); it == theirs_by_key.end() || it->second != v) keys.push_back(key);
  for (const auto& [key, v] : b)
    if (!mine_by_key.count(key)) keys.push_back(key);
  if (keys.empty()) return "";
  std::string out = keys.front() + " = " + value(mine_by_key, keys.front()) + " here, " +
                    value(theirs_by_key, keys.front()) + " " + where;
  if (keys.size() > 1) out += " (and " + std::to_string(keys.size() - 1) + " more)";
  return out;
}

std::string nearest_env_name(const std::string& name, const SettingsRegistry& registry) {
  std::string best;
  std::size_t best_distance = 3;  // at most two edits, or the same letters without the underscores
  for (const auto& s : registry.settings()) {
    const std::string env = SettingsRegistry::env_name(s.key);
    std::size_t distance = typo_distance(name, env);
    if (without_underscores(name) == without_underscores(env)) distance = std::min<std::size_t>(distance, 1);
    if (distance < best_distance) {
      best_distance = distance;
      best = env;
    }
  }
  return best;
}

std::vector<std::string> process_environment() {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  return env;
}

LoadedConfig load_config(const std::vector<std::string>& args, const std::vector<std::string>& environment,
                         const SettingsRegistry& registry) {
  po::options_description desc;
  desc.add_options()("help,h", "show help");
  for (const auto& s : registry.settings()) {
    auto* value = po::value<std::string>();
    if (s.kind == "bool") value->implicit_value("true");
    desc.add_options()(s.key.c_str(), value, s.help.c_str());
  }
  po::options_description with_positional = desc;
  with_positional.add_options()("operand", po::value<std::vector<std::string>>(), "");
  po::positional_options_description positional;
  positional.add("operand", -1);

  LoadedConfig loaded;
  // Raw values by key; the first source to give a key wins (command line, environment, file).
  std::map<std::string, std::string> values;
  po::variables_map vm;
  try {
    auto parsed = po::command_line_parser(args).options(with_positional).positional(positional).run();
    for (const auto& opt : parsed.options) {
      if (opt.string_key == "operand" || opt.string_key == "help") continue;
      SHOAL_REQUIRE(!values.count(opt.string_key), ConfigError,
                    "command line: --" << opt.string_key << " is given more than once");
      values[opt.string_key] = opt.value.empty() ? std::string("true") : opt.value.front();
      loaded.sources[opt.string_key] = "command line";
    }
    po::store(parsed, vm);
  } catch (const po::error& e) {
    SHOAL_THROW(ConfigError, "command line: " << e.what());
  }
  loaded.help = vm.count("help") > 0;
  if (vm.count("operand")) {
    auto operands = vm["operand"].as<std::vector<std::string>>();
    loaded.config_path = operands.front();
    loaded.positional.assign(operands.begin() + 1, operands.end());
  }

  // Environment: every SHOAL_* variable must name a key.
  for (const auto& entry : environment) {
    if (entry.rfind("SHOAL_", 0) != 0) continue;
    std::size_t eq = entry.find('=');
    std::string name = entry.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : entry.substr(eq + 1);
    const Setting* match = nullptr;
    for (const auto& s : registry.settings())
      if (SettingsRegistry::env_name(s.key) == name) match = &s;
    // Kubernetes' own (a Service named shoal-metrics makes SHOAL_METRICS_PORT=tcp://...): ignored.
    if (is_kubernetes_service_link(name, value)) continue;
    if (match == nullptr) {
      // A typo of a setting is an error (the job would run without it); any other SHOAL_* name
      // (a user's own script's) a warning.
      const std::string near = nearest_env_name(name, registry);
      SHOAL_REQUIRE(near.empty(), ConfigError,
                    "environment variable " << name << " does not name a setting: did you mean " << near
                                            << "? (see shoal --help)");
      loaded.warnings.push_back("environment variable " + name +
                                " names no setting and is ignored (a SHOAL_* name close to a setting's is an error)");
      continue;
    }
    if (values.count(match->key)) continue;  // the command line wins
    values[match->key] = value;
    loaded.sources[match->key] = "env " + name;
  }

  if (!loaded.config_path.empty()) {
    std::ifstream file(loaded.config_path);
    SHOAL_REQUIRE(file.good(), ConfigError, "cannot open job file '" << loaded.config_path << "'");
    po::parsed_options parsed(&desc);
    try {
      parsed = po::parse_config_file(file, desc, /*allow_unregistered=*/false);
    } catch (const po::unknown_option& e) {
      SHOAL_THROW(ConfigError, loaded.config_path << ": unknown key '" << e.get_option_name() << "'");
    } catch (const po::error& e) {
      SHOAL_THROW(ConfigError, loaded.config_path << ": " << e.what());
    }
    std::map<std::string, int> seen;
    for (const auto& opt : parsed.options) {
      SHOAL_REQUIRE(++seen[opt.string_key] == 1, ConfigError,
                    loaded.config_path << ": key " << opt.string_key << " is given more than once");
      if (values.count(opt.string_key)) continue;
      values[opt.string_key] = opt.value.empty() ? std::string() : opt.value.front();
      loaded.sources[opt.string_key] = "file " + loaded.config_path;
    }
  }

  for (const auto& s : registry.settings()) {
    if (!values.count(s.key)) continue;
    try {
      s.set(loaded.config, values[s.key]);
    } catch (const ConfigError& e) {
      SHOAL_THROW(ConfigError, e.what() << " (from " << loaded.sources[s.key] << ")");
    }
  }
  loaded.config.optimizer.kind = parse_optimizer_kind(loaded.config.optimizer_name);
  check_data_spec(loaded.config.data);
  return loaded;
}

}  // namespace shoal
