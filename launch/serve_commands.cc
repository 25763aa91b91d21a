// shoal export | predict | serve: a trained model out of Shoal (docs/serving.md).
#include "launch/serve_commands.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "base/error.h"
#include "base/process.h"
#include "checkpoint/checkpoint.h"
#include "compute/backend.h"
#include "config/config.h"
#include "data/source.h"
#include "models/onnx.h"
#include "serve/inference.h"
#include "serve/protocol.h"
#include "serve/server.h"
#include "serve/trained_model.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;

// "--key value" or "--key=value" at args[*i]; advances *i past the value.
std::string option_value(const std::vector<std::string>& args, std::size_t* i, const std::string& key,
                         const char* usage) {
  const std::string& a = args[*i];
  if (a.size() > key.size() && a.compare(0, key.size() + 1, key + "=") == 0) return a.substr(key.size() + 1);
  SHOAL_REQUIRE(*i + 1 < args.size(), ConfigError, key << " needs a value\n" << usage);
  return args[++*i];
}

bool is_option(const std::string& a, const std::string& key) {
  return a == key || (a.size() > key.size() && a.compare(0, key.size() + 1, key + "=") == 0);
}

std::int64_t parse_int(const std::string& text, const std::string& what, std::int64_t lo, std::int64_t hi) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  SHOAL_REQUIRE(!text.empty() && *end == '\0' && v >= lo && v <= hi, ConfigError,
                what << " '" << text << "' is not a whole number from " << lo << " to " << hi);
  return v;
}

BackendOptions cpu_backend() {
  BackendOptions options;
  options.device = Device::cpu();
  return options;
}

const char* kExportUsage =
    "usage: shoal export CHECKPOINT|MODEL.onnx [-o FILE.onnx] [--opset 11..17] [--probabilities]";

}  // namespace

int export_command(const std::vector<std::string>& args, const Logger& log) {
  std::string from, out;
  ExportOptions options;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (is_option(args[i], "-o")) {
      out = option_value(args, &i, "-o", kExportUsage);
    } else if (is_option(args[i], "--output")) {
      out = option_value(args, &i, "--output", kExportUsage);
    } else if (is_option(args[i], "--opset")) {
      options.opset = static_cast<int>(parse_int(option_value(args, &i, "--opset", kExportUsage), "--opset", 1, 1000));
    } else if (args[i] == "--probabilities") {
      options.probabilities = true;
    } else {
      SHOAL_REQUIRE(args[i].rfind("-", 0) != 0 && from.empty(), ConfigError,
                    "export: unexpected '" << args[i] << "'\n"
                                           << kExportUsage);
      from = args[i];
    }
  }
  SHOAL_REQUIRE(!from.empty(), ConfigError, kExportUsage);
  TrainedModel trained = load_trained_model(from, log);
  if (out.empty()) out = fs::path(trained.meta.name).stem().string() + ".onnx";
  const std::string bytes =
      export_onnx(*trained.model, trained.values.data(), trained.buffers.data(), trained.meta, options);
  const fs::path target = fs::absolute(out);
  write_file_atomic(target.parent_path().string(), target.filename().string(), bytes);
  std::printf("wrote %s: %s, input %s, %lld classes, step %lld, opset %d, %zu bytes (from %s)\n", out.c_str(),
              trained.meta.name.c_str(), dims_text(trained.meta.input).c_str(),
              static_cast<long long>(trained.meta.classes), static_cast<long long>(trained.meta.step), options.opset,
              bytes.size(), trained.source.c_str());
  return 0;
}

namespace {
const char* kPredictUsage =
    "usage: shoal predict MODEL IMAGE... [--top K] [--batch N]\n"
    "       shoal predict MODEL --data JOB.ini [--limit N] [--top K]   (the job's test set)\n"
    "MODEL: an .onnx file or a checkpoint";

// The test set of a job file, through the job's own loader: one line per sample with its true
// label, then {"samples": N, "accuracy": A}.
int predict_test_set(InferenceModel& model, const std::string& job, std::int64_t limit, std::int64_t k,
                     std::int64_t batch, const Logger& log) {
  SettingsRegistry registry;
  JobConfig config = load_config({job}, process_environment(), registry).config;
  // The model's own normalisation, not the one the job file would measure now (another
  // train_limit measures another mean): the inputs it was trained and evaluated on.
  const ModelMeta& meta = model.meta();
  config.data.normalize = meta.normalize;
  if (meta.normalize && !meta.mean.empty()) {
    config.data.mean.assign(meta.mean.begin(), meta.mean.end());
    config.data.stddev.assign(meta.stddev.begin(), meta.stddev.end());
  }
  DataSources data = open_data(config.data, log);
  const DataSource& test = *data.test;
  SHOAL_REQUIRE(test.sample_size() == model.sample_size(), ConfigError,
                job << ": its samples are " << test.info().channels << "x" << test.info().height << "x"
                    << test.info().width << ", the model takes " << dims_text(model.meta().input));
  const std::int64_t n = limit > 0 ? std::min(limit, test.count()) : test.count();
  const std::int64_t size = model.sample_size(), classes = model.classes();
  std::int64_t correct = 0, counted = 0;
  for (std::int64_t first = 0; first < n; first += batch) {
    const std::int64_t m = std::min(batch, n - first);
    std::vector<float> x(static_cast<std::size_t>(m * size));
    std::vector<std::int32_t> y(static_cast<std::size_t>(m));
    std::vector<bool> ok(static_cast<std::size_t>(m));
    for (std::int64_t i = 0; i < m; ++i)
      ok[static_cast<std::size_t>(i)] =
          test.load(first + i, SampleContext{}, x.data() + i * size, &y[static_cast<std::size_t>(i)]);
    std::vector<float> logits(static_cast<std::size_t>(m * classes));
    model.predict(x.data(), m, logits.data());
    for (std::int64_t i = 0; i < m; ++i) {
      if (!ok[static_cast<std::size_t>(i)]) continue;
      const SamplePrediction p = predict_sample(logits.data() + i * classes, model.meta(), k);
      ++counted;
      correct += p.label == y[static_cast<std::size_t>(i)];
      nlohmann::json line{{"sample", first + i},
                          {"class", p.name},
                          {"index", p.label},
                          {"score", p.score},
                          {"label", y[static_cast<std::size_t>(i)]}};
      nlohmann::json top = nlohmann::json::array();
      for (const auto& [name, score] : p.top) top.push_back({{"class", name}, {"score", score}});
      line["top"] = std::move(top);
      std::printf("%s\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  }
  nlohmann::json end{{"samples", counted},
                     {"accuracy", counted ? static_cast<double>(correct) / static_cast<double>(counted) : 0.0}};
  std::printf("%s\n", end.dump().c_str());
  return 0;
}
}  // namespace

int predict_command(const std::vector<std::string>& args, const Logger& log) {
  std::string model_path;
  std::vector<std::string> files;
  std::string job;
  std::int64_t k = 5, batch = 64, limit = 0;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (is_option(args[i], "--data")) {
      job = option_value(args, &i, "--data", kPredictUsage);
    } else if (is_option(args[i], "--limit")) {
      limit = parse_int(option_value(args, &i, "--limit", kPredictUsage), "--limit", 1, std::int64_t{1} << 40);
    } else if (is_option(args[i], "--top")) {
      k = parse_int(option_value(args, &i, "--top", kPredictUsage), "--top", 1, 1 << 20);
    } else if (is_option(args[i], "--batch")) {
      batch = parse_int(option_value(args, &i, "--batch", kPredictUsage), "--batch", 1, 1 << 16);
    } else {
      SHOAL_REQUIRE(args[i].rfind("-", 0) != 0, ConfigError,
                    "predict: unknown option '" << args[i] << "'\n"
                                                << kPredictUsage);
      (model_path.empty() ? model_path : files.emplace_back()) = args[i];
    }
  }
  SHOAL_REQUIRE(!model_path.empty() && (files.empty() != job.empty()), ConfigError, kPredictUsage);
  InferenceModel model(load_trained_model(model_path, log), cpu_backend());
  if (!job.empty()) return predict_test_set(model, job, limit, k, batch, log);
  const ModelMeta& meta = model.meta();
  const std::int64_t size = model.sample_size(), classes = model.classes();
  for (std::size_t first = 0; first < files.size(); first += static_cast<std::size_t>(batch)) {
    const std::size_t last = std::min(files.size(), first + static_cast<std::size_t>(batch));
    std::vector<float> x((last - first) * static_cast<std::size_t>(size));
    for (std::size_t f = first; f < last; ++f) {
      std::ifstream in(files[f], std::ios::binary);
      SHOAL_REQUIRE(in, DataError, files[f] << ": cannot be read");
      const std::vector<std::uint8_t> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
      preprocess_image(bytes, meta, files[f], x.data() + (f - first) * static_cast<std::size_t>(size));
    }
    std::vector<float> logits((last - first) * static_cast<std::size_t>(classes));
    model.predict(x.data(), static_cast<std::int64_t>(last - first), logits.data());
    for (std::size_t f = first; f < last; ++f) {
      const SamplePrediction p =
          predict_sample(logits.data() + (f - first) * static_cast<std::size_t>(classes), meta, k);
      nlohmann::json line{{"file", files[f]}, {"class", p.name}, {"index", p.label}, {"score", p.score}};
      nlohmann::json top = nlohmann::json::array();
      for (const auto& [name, score] : p.top) top.push_back({{"class", name}, {"score", score}});
      line["top"] = std::move(top);
      std::printf("%s\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    }
  }
  return 0;
}

int serve_command(std::vector<std::string> args, const SettingsRegistry& registry, const StopSignals& signals,
                  const Logger& log) {
  // MODEL is the first operand that is not an option; a job file may follow it.
  std::string model_path;
  for (auto it = args.begin(); it != args.end(); ++it) {
    if (it->rfind("-", 0) == 0) {
      if (it->find('=') == std::string::npos && std::next(it) != args.end()) ++it;  // --key value
      continue;
    }
    model_path = *it;
    args.erase(it);
    break;
  }
  SHOAL_REQUIRE(!model_path.empty(), ConfigError,
                "usage: shoal serve MODEL [JOB.ini] [--serve.port=N ...]  (MODEL: an .onnx file, a ckpt-<step> "
                "directory, or a checkpoint.dir to follow; docs/serving.md)");
  LoadedConfig loaded = load_config(args, process_environment(), registry);
  SHOAL_REQUIRE(loaded.positional.empty(), ConfigError,
                "serve: unexpected operand '" << loaded.positional.front() << "'");
  JobConfig config = loaded.config;
  // Cloud Run (and Knative) tell the container its port in PORT.
  if (auto it = loaded.sources.find("serve.port"); it == loaded.sources.end() || it->second == "default") {
    if (const char* port = std::getenv("PORT"); port != nullptr && *port != '\0')
      config.serve.port = parse_int(port, "the PORT environment variable", 1, 65535);
  }
  Logger serve_log = log;
  for (const auto& warning : loaded.warnings) serve_log.write(LogLevel::warn, warning);
  ModelServer server(config, model_path, serve_log);
  std::printf("serving '%s' on port %d\n", server.model_name().c_str(), server.port());
  std::fflush(stdout);
  while (!signals.requested().load()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                             std::chrono::duration<double>(config.serve.drain_seconds));
  SHOAL_LOG(log, info,
            "signal " << signals.signal() << ": not ready; answering the requests in flight (at most "
                      << config.serve.drain_seconds << " s)");
  const bool drained = server.drain(deadline);
  if (!drained) SHOAL_LOG(log, warn, "serve.drain_seconds passed with requests unanswered; exiting anyway");
  SHOAL_LOG(log, info, "stopped");
  return 0;
}

}  // namespace shoal
