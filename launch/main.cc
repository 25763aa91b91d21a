// The one `shoal` binary: dispatches to a role (train, and later coordinator, ps, worker,
// launch) and turns library errors into a one-line message and a documented exit code.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "coordinator/coordinator.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/error.h"
#include "core/log.h"
#include "core/process.h"
#include "launch/local_launcher.h"
#include "ps/parameter_server.h"
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
    "  config --markdown print the settings table of docs/configuration.md\n"
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

LoadedConfig load_and_report(const std::vector<std::string>& args, const SettingsRegistry& registry, Logger& log) {
  LoadedConfig loaded = load_config(args, process_environment(), registry);
  log = log.with_level(parse_log_level(loaded.config.log_level));
  return loaded;
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
    if (cuda_built()) std::printf("%s\n", describe_gpus().c_str());
    return 0;
  }

  Logger log(command, LogLevel::info);
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
    if (command == "worker") signals.emplace();
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
                    "Kubernetes is not supported yet)");
      // The coordinator prints the effective configuration.
      std::vector<std::string> overrides;
      for (const auto& a : args)
        if (a != loaded.config_path) overrides.push_back(a);
      return run_local_launch(loaded.config_path, overrides, loaded.config, log);
    }
    Network network;
    if (command == "coordinator") {
      std::printf("effective configuration:\n%s", loaded.describe(registry).c_str());
      std::fflush(stdout);
      MetricsWriter metrics =
          loaded.config.metrics_file.empty() ? MetricsWriter() : MetricsWriter(loaded.config.metrics_file);
      Coordinator coordinator(network, loaded.config, log, metrics);
      coordinator.run();
    } else if (command == "ps") {
      ParameterServer::run_role(network, loaded.config, log);
    } else {
      run_worker_role(network, loaded.config, log, stop);
    }
    return 0;
  }
  std::fprintf(stderr, "shoal: error: unknown command '%s'\n\n%s", command.c_str(), kUsage);
  return static_cast<int>(ExitCode::usage);
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
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
