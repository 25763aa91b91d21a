// The job configuration: one typed struct, and one registry that knows every key (its type,
// default, allowed range and help). Values come from an INI job file, `SHOAL_*` environment
// variables and `--key=value` options; the command line wins over the environment, which wins
// over the file. Unknown keys and out-of-range values are ConfigErrors that name the key and
// where its value came from. The registry also prints --help and docs/configuration.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compute/lr_schedule.h"
#include "compute/optimizer.h"
#include "data/spec.h"

namespace shoal {

// Modes, parsed once when the configuration is loaded (compare these, never their names).
enum class StrategyKind { async, sync };                      // strategy
enum class JobEndAction { exit, wait };                       // cluster.on_job_end
enum class SyncBackend { auto_select, mpi, gloo, nccl };      // sync.backend
enum class BatchNormMode { local, sync };                     // sync.batch_norm
enum class LrStaleness { none, inverse };                     // async.lr_staleness
enum class ProgressSetting { auto_detect, bar, lines, off };  // progress (auto: bar on a terminal)

// `shoal serve` (serve.*, docs/serving.md).
struct ServeSettings {
  std::string name;          // the model's name in URLs ("": the model's own name)
  std::int64_t port = 8080;  // PORT (Cloud Run's convention) wins when serve.port is not set
  std::string host = "0.0.0.0";
  std::int64_t max_batch = 32;       // samples per model call
  std::int64_t max_delay_us = 2000;  // how long a request waits for others to batch with
  bool always_wait = false;          // false: wait only while requests arrive together
  std::int64_t queue = 256;          // requests waiting; beyond it 429 with Retry-After
  double timeout_seconds = 10;       // a request not started by then is answered 504
  std::int64_t max_body_mib = 32;    // larger request bodies are answered 413
  double drain_seconds = 10;         // SIGTERM: not ready, requests in flight answered, exit 0 within this
  double poll_seconds = 2;           // a checkpoint.dir served: how often LATEST is read
  std::int64_t http_threads = 2;     // threads parsing requests and writing answers
};

struct JobConfig {
  std::string model = "cnn";
  ServeSettings serve;

  DataSpec data;  // data.* (data/spec.h)

  std::int64_t epochs = 10;
  std::int64_t batch_size = 64;
  std::int64_t eval_batch_size = 1000;
  std::int64_t accumulate = 1;  // micro-batches per optimizer step
  double label_smoothing = 0;
  std::uint64_t seed = 1;

  std::string optimizer_name = "sgd";  // parsed into optimizer.kind
  OptimizerConfig optimizer;
  LrScheduleKind lr_schedule = LrScheduleKind::constant;
  double warmup_epochs = 0;
  double step_epochs = 1;
  double lr_gamma = 0.1;
  double lr_min = 0;

  // Distributed jobs (shoal coordinator / ps / worker / launch).
  StrategyKind strategy = StrategyKind::async;  // async (parameter servers) | sync (all-reduce)
  SyncBackend sync_backend = SyncBackend::auto_select;
  double bucket_mib = 25.0;
  BatchNormMode sync_batch_norm = BatchNormMode::local;
  double sync_timeout_seconds = 300.0;
  bool sync_elastic = false;
  std::string sync_interface;
  std::string coordinator_address = "tcp://127.0.0.1:7600";
  std::int64_t servers = 2;
  std::int64_t workers = 2;
  std::int64_t node_rank = -1;
  std::int64_t node_local_rank = -1;
  std::string node_address = "tcp://127.0.0.1:0";
  bool node_rank_from_hostname = false;  // node.rank from the host name's ordinal (shoal-ps-3 -> 3)
  std::string node_advertise;            // "": this host's fully qualified name when node.address binds every interface
  std::int64_t staleness = 2;
  LrStaleness lr_staleness = LrStaleness::none;
  std::int64_t chunk_kib = 4096;
  std::int64_t max_in_flight = 8;
  std::int64_t shard_size = 1024;
  double heartbeat_seconds = 1.0;
  double dead_after_seconds = 3.0;
  double lease_timeout_seconds = 120.0;
  double request_timeout_seconds = 60.0;
  double startup_timeout_seconds = 120.0;
  double stall_seconds = 300.0;
  // Async jobs with checkpoint.dir: servers and workers keep working this long without the
  // coordinator, waiting for a restarted one to take the job over (0: they exit with it).
  double coordinator_grace_seconds = 60.0;
  JobEndAction on_job_end = JobEndAction::exit;  // exit | wait (a StatefulSet's pods: stay until deleted)

  // Checkpoints (docs/checkpoint-format.md) and restarts.
  std::string checkpoint_dir;  // "": no checkpoints
  std::int64_t checkpoint_every_steps = 0;
  double checkpoint_every_seconds = 0;
  std::int64_t checkpoint_keep = 3;
  std::string checkpoint_resume = "auto";  // auto | never | a checkpoint directory
  double checkpoint_on_term_older_than = 30;
  bool launch_restart_workers = false;
  std::int64_t launch_max_restarts = 3;

  std::int64_t threads = 0;  // 0: all cores
  std::string device = "auto";
  bool cuda_tf32 = true;
  std::string auth_keys;  // "": no authentication; else the job's key directory (shoal keys generate)
  std::string log_level = "info";
  std::string metrics_file;
  std::int64_t metrics_port = -1;  // -1: no status endpoint; 0: any free port
  std::string metrics_host = "0.0.0.0";
  ProgressSetting progress = ProgressSetting::auto_detect;

  bool sync() const { return strategy == StrategyKind::sync; }
  // Servers and workers outlive their coordinator and take up with a restarted one (async jobs:
  // its state lives beside the checkpoints; a sync job's coordinator dies with rank 0).
  bool coordinator_failover() const { return !sync() && !checkpoint_dir.empty() && coordinator_grace_seconds > 0; }
  // The learning-rate schedule's settings (lr.*, with optimizer.lr as its base rate).
  LrScheduleSettings lr_schedule_settings() const {
    return {lr_schedule, optimizer.lr, warmup_epochs, step_epochs, lr_gamma, lr_min};
  }
};

const char* strategy_name(StrategyKind kind);
const char* sync_backend_name(SyncBackend backend);  // "auto", "mpi", "gloo", "nccl"

// One configuration key.
struct Setting {
  std::string key;
  std::string kind;   // "int", "float", "bool", "string" or "a | b | c"
  std::string range;  // human-readable bounds, "" if none
  std::string help;
  std::function<void(JobConfig&, const std::string&)> set;  // parses and validates; throws ConfigError
  std::function<std::string(const JobConfig&)> get;
};

class SettingsRegistry {
 public:
  SettingsRegistry();  // registers every key of JobConfig
  const std::vector<Setting>& settings() const { return settings_; }
  const Setting* find(const std::string& key) const;
  static std::string env_name(const std::string& key);  // "train.batch_size" -> "SHOAL_TRAIN_BATCH_SIZE"
  std::string help_text() const;                        // for --help
  std::string markdown_table() const;                   // for docs/configuration.md

 private:
  std::vector<Setting> settings_;
};

struct LoadedConfig {
  JobConfig config;
  std::map<std::string, std::string> sources;  // key -> "default", "file <path>", "env SHOAL_X", "command line"
  bool help = false;
  std::string config_path;
  std::vector<std::string> positional;  // command-specific operands after the config file
  std::vector<std::string> warnings;    // what the caller should log: SHOAL_* names of no setting

  // "key = value   (source)" lines, one per key.
  std::string describe(const SettingsRegistry& registry) const;
};

// The settings every process of a job must share (the model, the data and its transforms, the
// training and optimizer settings, the strategy's), "key = value" per line in registry order;
// a process's own (paths, ports, threads, device, rank, timeouts) are not among them. Sent at
// registration: a member whose lines differ from the coordinator's is refused.
std::string job_settings_text(const JobConfig& config, const SettingsRegistry& registry);
std::uint64_t settings_digest(const std::string& text);  // FNV-1a, 64 bits
// "train.batch_size = 64 here, 32 at the coordinator" for the first line that differs (and how
// many more do), or "" when they agree.
std::string first_setting_difference(const std::string& mine, const std::string& theirs, const std::string& where);

// The setting's environment name within two edits of `name` (or equal to it without the
// underscores), or "": a typo, where a name far from every setting is someone else's variable.
std::string nearest_env_name(const std::string& name, const SettingsRegistry& registry);

// Parses `args` (after the subcommand): [CONFIG] [--key=value | --key value]... [--help].
// `environment` is a list of "NAME=value" strings (normally environ); only SHOAL_* are read. A
// SHOAL_* name of no setting is a ConfigError when it is close to one (a typo), else a warning.
LoadedConfig load_config(const std::vector<std::string>& args, const std::vector<std::string>& environment,
                         const SettingsRegistry& registry);

// A variable Kubernetes generated for a Service whose name starts with `shoal`
// (SHOAL_COORDINATOR_SERVICE_HOST=10.0.0.7, SHOAL_PS_PORT=tcp://10.0.0.8:5555, ...): by name and
// by value. load_config ignores these; any other SHOAL_* variable must name a setting.
bool is_kubernetes_service_link(const std::string& name, const std::string& value);

std::vector<std::string> process_environment();

}  // namespace shoal
