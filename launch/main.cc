// The one `shoal` binary: dispatches to a role (train, and later coordinator, ps, worker,
// launch) and turns library errors into a one-line message and a documented exit code.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/cpus.h"
#include "base/environment.h"
#include "base/error.h"
#include "base/log.h"
#include "base/process.h"
#include "checkpoint/checkpoint.h"
#include "comm/auth.h"
#include "compute/backend.h"
#include "compute/devices/devices.h"
#include "config/config.h"
#include "coordinator/coordinator.h"
#include "data/source.h"
#include "data/writer.h"
#include "launch/local_launcher.h"
#include "launch/serve_commands.h"
#include "models/model_file.h"
#include "models/onnx.h"
#include "ps/server_role.h"
#include "telemetry/status_server.h"
#include "telemetry/telemetry.h"
#include "worker/train_job.h"
#include "worker/worker_job.h"

namespace shoal {
namespace {

const char* kUsage =
    "usage: shoal COMMAND [JOB.ini] [--key=value ...]\n"
    "\n"
    "Shoal trains neural networks on one machine or many (docs/architecture.md).\n"
    "\n"
    "commands:\n"
    "  train JOB.ini     train in this process and report test accuracy after every epoch\n"
    "  launch JOB.ini --local\n"
    "                    run a whole job here: async (coordinator, cluster.servers parameter\n"
    "                    servers, cluster.workers workers as processes on loopback) or sync\n"
    "                    (cluster.workers ranks, through mpirun for sync.backend = mpi)\n"
    "  coordinator JOB.ini  the control plane of an asynchronous job\n"
    "  ps JOB.ini        one parameter-server shard (node.rank, node.address)\n"
    "  worker JOB.ini    one worker: async (node.rank), or a rank of a sync job; under\n"
    "                    mpirun -np N, rank and world come from Open MPI and rank 0 runs\n"
    "                    the coordinator\n"
    "  config JOB.ini    check a job file and print the effective configuration\n"
    "  model show NAME|FILE.yaml [--input 3x224x224] [--classes N]\n"
    "                    a model's layers with output shapes, parameters and multiply-adds\n"
    "                    (a zoo name or a model file, docs/models.md)\n"
    "  export CHECKPOINT [-o FILE.onnx] [--opset 11..17]\n"
    "                    write a trained model as ONNX (docs/serving.md)\n"
    "  predict MODEL IMAGE...  [--top K]\n"
    "                    classify image files: one JSON line each (MODEL: .onnx or a checkpoint)\n"
    "  serve MODEL [JOB.ini] [--serve.port=N ...]\n"
    "                    serve a model over KServe v2 and TF Serving REST; a checkpoint.dir is\n"
    "                    followed, each new checkpoint swapped in (docs/serving.md)\n"
    "  config --markdown print the settings table of docs/configuration.md\n"
    "  checkpoint inspect DIR\n"
    "                    print a checkpoint: its step, files with sizes and CRCs, range files\n"
    "                    with their elements and optimizer slots, position and layout\n"
    "  checkpoint verify DIR\n"
    "                    check every file of a checkpoint against its MANIFEST (exit 5 if one\n"
    "                    does not match). DIR is a ckpt-<step> directory, or a checkpoint.dir:\n"
    "                    then the checkpoint a job would resume from (docs/checkpoint-format.md)\n"
    "  data stats JOB.ini\n"
    "                    measure the training set's per-channel mean and std (data.mean,\n"
    "                    data.std) through the evaluation transform\n"
    "  data write JOB.ini folder|tar DIR [png|jpeg] [SAMPLES_PER_SHARD]\n"
    "                    write the job's idx or cifar10 data set as image files: DIR/train/<class>/\n"
    "                    and DIR/test/<class>/, or tar shards DIR/train-000000.tar ... (docs/data.md)\n"
    "  keys generate DIR [--servers N] [--workers N]\n"
    "                    make a job's CURVE keys for auth.keys: one per member (coordinator,\n"
    "                    ps.0.., worker.0..) and the servers' (docs/authentication.md)\n"
    "  version           print the version and what this build can use (CUDA, cuDNN, NCCL)\n"
    "  help              this text\n"
    "\n"
    "Every setting can be given in the job file ([section] key = value), as --section.key=value\n"
    "on the command line, or as SHOAL_SECTION_KEY in the environment; the command line wins over\n"
    "the environment, which wins over the file.\n"
    "\n"
    "exit codes: 0 success, 2 bad command line or configuration, 3 bad dataset file, 4 I/O error,\n"
    "5 checkpoint error, 6 timeout, 7 device unavailable, 8 protocol error, 9 training diverged,\n"
    "10 a process the job needs was lost, 1 internal error. A process of a failed job exits with\n"
    "the job's code.\n";

int print_help(const SettingsRegistry& registry, const char* command) {
  std::printf("%s\n", kUsage);
  if (command != nullptr) std::printf("options of '%s':\n", command);
  std::printf("%s", registry.help_text().c_str());
  return 0;
}

// node.rank_from_hostname: a StatefulSet pod's rank is its name's ordinal.
void rank_from_hostname(JobConfig& config) {
  if (!config.node_rank_from_hostname) return;
  char host[256] = {0};
  SHOAL_REQUIRE(gethostname(host, sizeof(host) - 1) == 0, ConfigError, "node.rank_from_hostname: gethostname failed");
  auto ordinal = hostname_ordinal(host);
  SHOAL_REQUIRE(
      ordinal.has_value(), ConfigError,
      "node.rank_from_hostname: the host name '" << host << "' does not end in -N (a StatefulSet pod's ordinal)");
  SHOAL_REQUIRE(config.node_rank < 0 || config.node_rank == *ordinal, ConfigError,
                "node.rank = " << config.node_rank << " but node.rank_from_hostname gives " << *ordinal << " (host '"
                               << host << "'): set one of them");
  config.node_rank = *ordinal;
}

LoadedConfig load_and_report(const std::vector<std::string>& args, const SettingsRegistry& registry, Logger& log) {
  LoadedConfig loaded = load_config(args, process_environment(), registry);
  log = log.with_level(parse_log_level(loaded.config.log_level));
  for (const auto& warning : loaded.warnings) log.write(LogLevel::warn, warning);
  return loaded;
}

// ---- shoal checkpoint inspect|verify DIR ----------------------------------------------------

const char* kCheckpointUsage = "usage: shoal checkpoint inspect DIR | shoal checkpoint verify DIR";

// The checkpoint DIR means: DIR itself if it is one (it holds a MANIFEST or is named ckpt-<step>),
// else the one find_resumable picks under it, saying which, why, and what it passed over.
// *verified: whether every file was checked on the way (find_resumable verifies its pick).
std::string checkpoint_named_by(const std::string& dir, bool* verified) {
  namespace fs = std::filesystem;
  std::error_code ec;
  SHOAL_REQUIRE(fs::is_directory(dir, ec), CheckpointError, "'" << dir << "' is not a directory");
  fs::path path = fs::path(dir).lexically_normal();
  std::string base = path.has_filename() ? path.filename().string() : path.parent_path().filename().string();
  *verified = false;
  if (fs::exists(fs::path(dir) / checkpoint_file::kManifest, ec) || parse_checkpoint_name(base)) return dir;

  std::optional<std::string> latest;
  try {
    latest = read_latest(dir);
  } catch (const CheckpointError&) {
    // find_resumable reports it as passed over.
  }
  int passed_over = 0;
  auto picked = find_resumable(dir, [&](const std::string& where, const std::string& why) {
    std::printf("passed over %s: %s\n", where.c_str(), why.c_str());
    ++passed_over;
  });
  SHOAL_REQUIRE(picked, CheckpointError,
                "no usable checkpoint in '" << dir << "' ("
                                            << (passed_over > 0 ? "every one was passed over, see above"
                                                                : "no LATEST and no ckpt-<step> directory")
                                            << ")");
  bool by_latest = latest && fs::path(*picked).filename() == *latest;
  std::printf("using %s (%s)\n", picked->c_str(),
              by_latest ? "named by LATEST"
              : latest  ? "the newest that verifies; LATEST names another"
                        : "the newest that verifies; there is no LATEST");
  *verified = true;
  return *picked;
}

// "7 chunks: 0:120 400:118 ..." or, for many chunks, the count and the range of updates.
std::string describe_updates(const std::vector<std::pair<std::int64_t, std::int64_t>>& updates) {
  std::string out = std::to_string(updates.size());
  out += updates.size() == 1 ? " chunk" : " chunks";
  if (updates.size() <= 8) {
    out += " (first element:updates)";
    for (const auto& [first, count] : updates) {
      out += ' ';
      out += std::to_string(first);
      out += ':';
      out += std::to_string(count);
    }
    return out;
  }
  auto [lo, hi] = std::minmax_element(updates.begin(), updates.end(),
                                      [](const auto& a, const auto& b) { return a.second < b.second; });
  return out + ", " + std::to_string(lo->second) + "-" + std::to_string(hi->second) + " updates each";
}

const char* kKeysUsage =
    "usage: shoal keys generate DIR [--servers N] [--workers N] [--per-role]\n"
    "  writes DIR/server.key, DIR/<member>.key for the coordinator, ps.0 .. ps.N-1 and\n"
    "  worker.0 .. worker.N-1 (default: cluster.servers and cluster.workers' defaults, 2 each;\n"
    "  make keys for more workers than the job starts with if workers may join later), and\n"
    "  DIR/members. A job with auth.keys = DIR admits only these members (docs/authentication.md).\n"
    "  --per-role: DIR/coordinator/, DIR/ps/ and DIR/worker/ instead, each with only its role's\n"
    "  secret keys (worker/ has server.pub, the public half of server.key): one Kubernetes Secret\n"
    "  per role, so that no pod can act as a member of another role (async jobs).";

int keys_command(const std::vector<std::string>& args) {
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::printf("%s\n", kKeysUsage);
    return 0;
  }
  SHOAL_REQUIRE(args.size() >= 2 && args[0] == "generate", ConfigError, kKeysUsage);
  const JobConfig defaults;
  long long servers = defaults.servers, workers = defaults.workers;
  bool per_role = false;
  for (std::size_t i = 2; i < args.size(); ++i) {
    std::string name = args[i], value;
    if (name == "--per-role") {
      per_role = true;
      continue;
    }
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      SHOAL_REQUIRE(i + 1 < args.size(), ConfigError, "keys generate: " << name << " needs a value\n" << kKeysUsage);
      value = args[++i];
    }
    SHOAL_REQUIRE(name == "--servers" || name == "--workers", ConfigError,
                  "keys generate: unknown option '" << name << "'\n"
                                                    << kKeysUsage);
    char* end = nullptr;
    const long long n = std::strtoll(value.c_str(), &end, 10);
    SHOAL_REQUIRE(!value.empty() && *end == 0, ConfigError,
                  "keys generate: " << name << " '" << value << "' is not a number");
    (name == "--servers" ? servers : workers) = n;
  }
  generate_job_keys(args[1], static_cast<int>(std::clamp(servers, -1LL, 1000000LL)),
                    static_cast<int>(std::clamp(workers, -1LL, 1000000LL)), per_role);
  std::printf("wrote the CURVE keys of the coordinator, %lld servers and %lld workers to %s%s\n", servers, workers,
              args[1].c_str(), per_role ? " (coordinator/, ps/, worker/: one folder per role)" : "");
  return 0;
}

int checkpoint_command(const std::vector<std::string>& args) {
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::printf("%s\n", kCheckpointUsage);
    return 0;
  }
  SHOAL_REQUIRE(args.size() == 2 && (args[0] == "inspect" || args[0] == "verify"), ConfigError, kCheckpointUsage);
  std::string named = args[1];
  while (named.size() > 1 && named.back() == '/') named.pop_back();
  bool verified = false;
  const std::string dir = checkpoint_named_by(named, &verified);
  const Manifest manifest = read_manifest(dir);
  std::printf("checkpoint %s: step %lld, %zu files\n", dir.c_str(), static_cast<long long>(manifest.step),
              manifest.files.size());

  if (args[0] == "verify") {
    for (const auto& f : manifest.files) {
      if (!verified) verify_file(dir, f);  // throws, naming the file: exit 5
      std::printf("OK  %s  %llu bytes  crc32c %08x\n", f.name.c_str(), static_cast<unsigned long long>(f.size), f.crc);
    }
    std::printf("all %zu files match the MANIFEST\n", manifest.files.size());
    return 0;
  }

  if (!verified) std::printf("(not verified: `shoal checkpoint verify` reads every byte)\n");
  std::printf("files:\n");
  for (const auto& f : manifest.files)
    std::printf("  %14llu bytes  crc32c %08x  %s\n", static_cast<unsigned long long>(f.size), f.crc, f.name.c_str());
  std::vector<RangeInfo> ranges = list_ranges(dir, manifest);
  std::int64_t elements = 0;
  for (const auto& r : ranges) elements += r.end - r.begin;
  std::printf("range files: %zu, %lld elements\n", ranges.size(), static_cast<long long>(elements));
  for (const auto& r : ranges) {
    std::string arrays = "values";
    for (const auto& s : r.slots) arrays += ", " + s;
    std::printf("  %s  elements [%lld, %lld)  arrays: %s  updates: %s\n", r.file.c_str(),
                static_cast<long long>(r.begin), static_cast<long long>(r.end), arrays.c_str(),
                describe_updates(r.updates).c_str());
  }
  // The coordinator's text files, verbatim.
  for (const char* name : {checkpoint_file::kPosition, checkpoint_file::kLayout}) {
    std::string path = dir + "/" + name;
    if (!std::filesystem::exists(path)) continue;
    std::string text = read_whole_file(path);
    if (!text.empty() && text.back() != '\n') text += '\n';
    std::printf("%s:\n%s", name, text.c_str());
  }
  return 0;
}

// ---- shoal data stats|write ------------------------------------------------------------------

const char* kDataUsage =
    "usage: shoal data stats JOB.ini [--key=value ...]\n"
    "       shoal data write JOB.ini folder|tar DIR [png|jpeg] [SAMPLES_PER_SHARD] [--key=value ...]";

int data_command(const std::vector<std::string>& args, const SettingsRegistry& registry) {
  SHOAL_REQUIRE(!args.empty() && (args[0] == "stats" || args[0] == "write"), ConfigError, kDataUsage);
  Logger log("data", LogLevel::info);
  LoadedConfig loaded = load_and_report({args.begin() + 1, args.end()}, registry, log);
  DataSpec spec = loaded.config.data;
  const std::vector<std::string>& operands = loaded.positional;
  if (args[0] == "stats") {
    SHOAL_REQUIRE(operands.empty(), ConfigError, kDataUsage);
    spec.normalize = false;
    spec.mean.clear();
    spec.stddev.clear();
    DataSources data = open_data(spec, log);
    Normalization norm;
    if (const auto* memory = dynamic_cast<const MemorySource*>(data.train.get())) {
      norm = compute_normalization(memory->data());
    } else {
      norm = static_cast<const ImageSource&>(*data.train).measure(data.train->count());
    }
    std::string mean, std;
    for (std::size_t c = 0; c < norm.mean.size(); ++c) {
      char m[32], d[32];
      std::snprintf(m, sizeof(m), "%s%.4f", c ? "," : "", norm.mean[c]);
      std::snprintf(d, sizeof(d), "%s%.4f", c ? "," : "", norm.stddev[c]);
      mean += m;
      std += d;
    }
    std::printf("# %lld training samples of %s, %lldx%lldx%lld\n[data]\nmean = %s\nstd = %s\n",
                static_cast<long long>(data.train->count()), data.train->name().c_str(),
                static_cast<long long>(data.train->info().channels), static_cast<long long>(data.train->info().height),
                static_cast<long long>(data.train->info().width), mean.c_str(), std.c_str());
    return 0;
  }
  SHOAL_REQUIRE(operands.size() >= 2 && operands.size() <= 4 && (operands[0] == "folder" || operands[0] == "tar"),
                ConfigError, kDataUsage);
  SHOAL_REQUIRE(!spec.images(), ConfigError,
                "data write reads an idx or cifar10 data set (data.format = " << data_format_name(spec.format) << ")");
  ImageCodec codec = ImageCodec::png;
  if (operands.size() >= 3) {
    SHOAL_REQUIRE(operands[2] == "png" || operands[2] == "jpeg", ConfigError,
                  "data write: image codec '" << operands[2] << "' is not png or jpeg");
    if (operands[2] == "jpeg") codec = ImageCodec::jpeg;
  }
  std::int64_t per_shard = 5000;
  if (operands.size() == 4) {
    try {
      per_shard = std::stoll(operands[3]);
    } catch (const std::exception&) {
      per_shard = 0;
    }
    SHOAL_REQUIRE(per_shard > 0, ConfigError,
                  "data write: SAMPLES_PER_SHARD '" << operands[3] << "' is not a positive number");
  }
  const std::string dir = operands[1];
  TrainTestData data = load_train_test(data_format_name(spec.format), spec.dir, spec.train_limit, spec.test_limit);
  if (operands[0] == "folder") {
    write_image_folder(data.train, dir + "/train", codec);
    write_image_folder(data.test, dir + "/test", codec);
    std::printf("wrote %s/train/<class>/ (%lld images) and %s/test/<class>/ (%lld images)\n", dir.c_str(),
                static_cast<long long>(data.train.count), dir.c_str(), static_cast<long long>(data.test.count));
  } else {
    auto train = write_tar_shards(data.train, dir + "/train", per_shard, codec, loaded.config.seed);
    auto test = write_tar_shards(data.test, dir + "/test", per_shard, codec, loaded.config.seed + 1);
    std::printf("wrote %zu training shards (%s/train-000000.tar ...) and %zu test shards\n", train.size(), dir.c_str(),
                test.size());
  }
  return 0;
}

// ---- shoal model show -------------------------------------------------------------------------

const char* kModelUsage =
    "usage: shoal model show NAME|FILE.yaml [--input CxHxW] [--classes N] | shoal model show FILE.onnx";

int model_command(const std::vector<std::string>& args) {
  SHOAL_REQUIRE(args.size() >= 2 && args[0] == "show", ConfigError, kModelUsage);
  if (is_onnx_path(args[1])) {  // its shapes are the file's own
    SHOAL_REQUIRE(args.size() == 2, ConfigError,
                  "model show: an ONNX file has its own input and classes\n"
                      << kModelUsage);
    std::ifstream in(args[1], std::ios::binary);
    SHOAL_REQUIRE(in, ConfigError, "model '" << args[1] << "' cannot be read");
    const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    ImportedModel imported = import_onnx(bytes, args[1]);
    imported.model->declare();
    std::printf("%s\n", imported.model->summary().c_str());
    return 0;
  }
  auto [text, origin] = model_source(args[1]);
  ModelFileInfo info = read_model_info(text, origin);
  Shape input = info.input.value_or(Shape{3, 224, 224});
  std::int64_t classes = info.classes.value_or(1000);
  for (std::size_t i = 2; i < args.size(); ++i) {
    std::string key = args[i], value;
    if (auto eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      SHOAL_REQUIRE(i + 1 < args.size(), ConfigError, "model show: " << key << " needs a value\n" << kModelUsage);
      value = args[++i];
    }
    if (key == "--input") {
      std::vector<std::int64_t> dims;
      std::size_t start = 0;
      while (start <= value.size()) {
        std::size_t x = value.find('x', start);
        const std::string part = value.substr(start, x == std::string::npos ? std::string::npos : x - start);
        char* end = nullptr;
        const long long v = std::strtoll(part.c_str(), &end, 10);
        SHOAL_REQUIRE(!part.empty() && *end == '\0' && v >= 1 && v <= 1 << 20, ConfigError,
                      "model show: --input " << value << " is not CxHxW, such as 3x224x224");
        dims.push_back(v);
        if (x == std::string::npos) break;
        start = x + 1;
      }
      SHOAL_REQUIRE(dims.size() == 3, ConfigError,
                    "model show: --input " << value << " is not CxHxW, such as 3x224x224");
      input = Shape(dims);
    } else if (key == "--classes") {
      char* end = nullptr;
      const long long v = std::strtoll(value.c_str(), &end, 10);
      SHOAL_REQUIRE(!value.empty() && *end == '\0' && v >= 1 && v <= 1 << 24, ConfigError,
                    "model show: --classes " << value << " is not a positive number");
      classes = v;
    } else {
      SHOAL_THROW(ConfigError, "model show: unknown option '" << key << "'\n" << kModelUsage);
    }
  }
  auto model = build_model_from_text(text, origin, input, classes);
  model->declare();
  std::printf("%s\n", model->summary().c_str());
  return 0;
}

int run(int argc, char** argv) {
  SettingsRegistry registry;
  if (argc < 2) {
    std::fprintf(stderr, "%s", kUsage);
    return static_cast<int>(ExitCode::usage);
  }
  std::string command = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (command == "help" || command == "--help" || command == "-h") return print_help(registry, nullptr);
  if (command == "version" || command == "--version") {
    std::printf("%s\n", build_description().c_str());
    const CpuBudget cpus = cpu_budget();
    std::printf("CPUs: %d for threads = 0 (affinity mask %d; %s)\n", cpus.usable, cpus.affinity,
                cpus.quota ? ("cgroup quota " + std::to_string(*cpus.quota) + " from " + cpus.quota_from).c_str()
                           : "no cgroup CPU quota");
    if (cuda_built()) std::printf("%s\n", describe_gpus().c_str());
    return 0;
  }

  if (command == "checkpoint") return checkpoint_command(args);
  if (command == "keys") return keys_command(args);
  if (command == "data") return data_command(args, registry);
  if (command == "model") return model_command(args);

  Logger log(command, LogLevel::info);
  if (command == "export") return export_command(args, log);
  if (command == "predict") return predict_command(args, log);
  if (command == "serve") {
    StopSignals signals;  // first, before any thread: SIGTERM drains (the entry blocked it)
    return serve_command(args, registry, signals, log);
  }
  if (command == "config") {
    if (args.size() == 1 && args[0] == "--markdown") {
      std::printf("%s", registry.markdown_table().c_str());
      return 0;
    }
    LoadedConfig loaded = load_and_report(args, registry, log);
    if (loaded.help) return print_help(registry, "config");
    std::printf("effective configuration:\n%s", loaded.describe(registry).c_str());
    return 0;
  }
  if (command == "train") {
    LoadedConfig loaded = load_and_report(args, registry, log);
    if (loaded.help) return print_help(registry, "train");
    SHOAL_REQUIRE(loaded.positional.empty(), ConfigError,
                  "train takes one job file, got extra operand '" << loaded.positional.front() << "'");
    std::printf("effective configuration:\n%s", loaded.describe(registry).c_str());
    std::fflush(stdout);
    run_train_job(loaded.config, log);
    return 0;
  }
  if (command == "coordinator" || command == "ps" || command == "worker" || command == "launch") {
    // First thing, before any thread exists (they inherit the blocked signals), so a SIGTERM
    // during start-up (loading data, registering) is a stop request too, not the default action.
    std::optional<StopSignals> signals;
    // SIGTERM is a preemption: the coordinator takes a last checkpoint and every process exits
    // 0; a parameter server has its shard checkpointed, leaves, and its replacement restores it.
    if (command == "worker" || command == "coordinator" || command == "ps") signals.emplace();
    const std::atomic<bool>* stop = signals ? &signals->requested() : nullptr;
    bool local = false;
    if (command == "launch") {
      auto it = std::find(args.begin(), args.end(), "--local");
      local = it != args.end();
      if (local) args.erase(it);
    }
    LoadedConfig loaded = load_and_report(args, registry, log);
    if (loaded.help) return print_help(registry, command.c_str());
    SHOAL_REQUIRE(loaded.positional.empty(), ConfigError,
                  command << " takes one job file, got extra operand '" << loaded.positional.front() << "'");
    if (command == "launch") {
      SHOAL_REQUIRE(local, ConfigError,
                    "launch needs --local (across hosts: mpirun -np N shoal worker JOB.ini, docs/deploy-mpirun.md; "
                    "on Kubernetes: the StatefulSets of k8s/, docs/deploy-gke.md)");
      // The coordinator prints the effective configuration.
      std::vector<std::string> overrides;
      for (const auto& a : args)
        if (a != loaded.config_path) overrides.push_back(a);
      return run_local_launch(loaded.config_path, overrides, loaded.config, log);
    }
    // The status endpoint (metrics.port) lives as long as the role; the network's ZAP handler
    // counts into the telemetry, so the network goes first.
    Telemetry telemetry;
    Network network;
    telemetry.metrics.gauge("shoal_build_info", "1, labelled with this build", {{"version", SHOAL_VERSION}}).set(1);
    std::optional<StatusServer> status;
    if (loaded.config.metrics_port >= 0)
      status.emplace(telemetry, loaded.config.metrics_host, static_cast<int>(loaded.config.metrics_port), log);
    if (command == "ps" || command == "worker") rank_from_hostname(loaded.config);
    if (!loaded.config.auth_keys.empty() && command != "worker") {  // a worker knows its rank later (sync)
      use_job_keys(network, loaded.config.auth_keys, key_member(command, loaded.config.node_rank), log, &telemetry);
    }
    if (command == "coordinator") {
      std::printf("effective configuration:\n%s", loaded.describe(registry).c_str());
      std::fflush(stdout);
      MetricsWriter metrics =
          loaded.config.metrics_file.empty() ? MetricsWriter() : MetricsWriter(loaded.config.metrics_file);
      Coordinator coordinator(network, loaded.config, log, metrics);
      coordinator.set_term_flag(stop);
      coordinator.set_telemetry(&telemetry);
      coordinator.run();
    } else if (command == "ps") {
      run_server_role(network, loaded.config, log, stop, &telemetry);
    } else {
      run_worker_role(network, loaded.config, log, stop, &telemetry);
    }
    if (loaded.config.on_job_end == JobEndAction::wait && stop != nullptr && !stop->load()) {
      // The job is over (a role that failed threw instead): stay, serving the status endpoint,
      // until the pod is deleted. A StatefulSet restarts any container that exits, 0 or not.
      telemetry.metrics.gauge("shoal_job_over", "1 once the job is over (cluster.on_job_end = wait)").set(1);
      SHOAL_LOG(log, info, "the job is over; waiting for SIGTERM (cluster.on_job_end = wait)");
      while (!stop->load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      SHOAL_LOG(log, info, "SIGTERM after the job's end: exiting");
    }
    return 0;
  }
  std::fprintf(stderr, "shoal: error: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return static_cast<int>(ExitCode::usage);
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  // `shoal` (launch/entry.cc) starts this program with SIGINT and SIGTERM blocked, so a signal
  // during start-up is pending instead of fatal. The roles keep them blocked (StopSignals turns
  // them into a stop request); every other command takes them as any program does.
  const std::string command = argc > 1 ? argv[1] : "";
  if (command != "coordinator" && command != "ps" && command != "worker" && command != "serve")
    shoal::unblock_stop_signals();
  shoal::tune_allocator();
  try {
    return shoal::run(argc, argv);
  } catch (...) {
    // The process boundary: whatever escaped (a shoal::Error, Cap'n Proto's kj::Exception,
    // std::bad_alloc, ...) becomes one line and its documented exit code.
    shoal::Failure f = shoal::failure_of(std::current_exception());
    std::fflush(stdout);
    std::fprintf(stderr, "shoal: error: %s\n", f.message.c_str());
    return static_cast<int>(f.code);
  }
}
