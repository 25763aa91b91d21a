#include "launch/local_launcher.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <optional>
#include <thread>

#include "base/cpus.h"
#include "base/error.h"
#include "base/process.h"
#include "checkpoint/checkpoint.h"
#include "ps/parameter_server.h"

namespace shoal {
namespace {

std::atomic<int> g_signal{0};
std::atomic<bool> g_second_signal{false};
int g_wake_fd = -1;

void on_signal(int sig) {
  if (g_signal != 0) g_second_signal = true;
  g_signal = sig;
  if (g_wake_fd >= 0) {
    char c = 1;
    (void)!write(g_wake_fd, &c, 1);
  }
}

struct Child {
  std::string name;
  std::vector<std::string> argv;  // to restart it
  int restarts = 0;
  pid_t pid = -1;
  int out = -1;         // read end of its stdout+stderr
  std::string partial;  // an unfinished line
  bool exited = false;
  int code = 0;
  bool preempted = false;  // a parameter server that said it left on SIGTERM
};

// What the launcher's processes run: the `shoal` entry beside this program (launch/entry.cc),
// so each starts with its stop signals blocked, or this program itself where there is none.
std::string self_executable() {
  char path[4096];
  ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
  SHOAL_REQUIRE(n > 0, IoError, "cannot find the shoal executable (/proc/self/exe)");
  path[n] = 0;
  const std::string self = path;
  const std::string entry = self.substr(0, self.rfind('/') + 1) + "shoal";
  return access(entry.c_str(), X_OK) == 0 ? entry : self;
}

Child spawn(const std::string& name, const std::vector<std::string>& argv) {
  int fds[2];
  SHOAL_REQUIRE(pipe(fds) == 0, IoError, "pipe failed: " << std::strerror(errno));
  pid_t parent = getpid();
  pid_t pid = fork();
  SHOAL_REQUIRE(pid >= 0, IoError, "fork failed: " << std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // the launcher died: so do we
    unblock_all_signals();             // the child starts as a fresh process would
    if (getppid() != parent) _exit(1);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s failed: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK);  // drain() must never block
  Child c;
  c.name = name;
  c.argv = argv;
  c.pid = pid;
  c.out = fds[0];
  return c;
}

std::string g_final_line;  // the coordinator's "final test accuracy" line, repeated at the end

void print_lines(Child& c, const char* data, std::size_t n, std::size_t width) {
  c.partial.append(data, n);
  std::size_t start = 0, nl;
  while ((nl = c.partial.find('\n', start)) != std::string::npos) {
    std::string line = c.partial.substr(start, nl - start);
    if (c.name == "coordinator" && line.rfind("final test accuracy", 0) == 0) g_final_line = line;
    if (c.name.rfind("ps.", 0) == 0 && line.find(ParameterServer::kPreemptedLine) != std::string::npos)
      c.preempted = true;
    std::printf("%-*s | %s\n", static_cast<int>(width), c.name.c_str(), line.c_str());
    start = nl + 1;
  }
  c.partial.erase(0, start);
  std::fflush(stdout);
}

void drain(Child& c, std::size_t width) {
  if (c.out < 0) return;
  char buf[65536];
  while (true) {
    ssize_t n = read(c.out, buf, sizeof(buf));
    if (n > 0) {
      print_lines(c, buf, static_cast<std::size_t>(n), width);
      continue;
    }
    if (n == 0) {
      if (!c.partial.empty()) print_lines(c, "\n", 1, width);
      close(c.out);
      c.out = -1;
    }
    return;
  }
}

int status_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int pick_free_port() { return free_loopback_port(); }

int run_local_launch(const std::string& job_file, const std::vector<std::string>& overrides, const JobConfig& config,
                     Logger log) {
  const std::string exe = self_executable();
  std::string coordinator = "tcp://127.0.0.1:" + std::to_string(pick_free_port());
  // Settings the launcher decides are taken out of what is passed along.
  std::vector<std::string> passed;
  for (const auto& a : overrides) {
    bool ours = false;
    for (const char* key : {"--cluster.coordinator", "--node.rank", "--node.local_rank", "--node.address", "--progress",
                            "--metrics.port", "--cluster.on_job_end"})
      if (a.rfind(key, 0) == 0) ours = true;
    if (!ours) passed.push_back(a);
  }
  const long cores = usable_cpus();  // affinity and cgroup quota (base/cpus.h)
  const long worker_threads = config.threads > 0 ? config.threads : std::max(1L, cores / config.workers);

  auto command = [&](const std::string& role, int rank, long threads) {
    std::vector<std::string> argv{exe, role};
    if (!job_file.empty()) argv.push_back(job_file);
    argv.insert(argv.end(), passed.begin(), passed.end());
    argv.push_back("--cluster.coordinator=" + coordinator);
    argv.push_back("--progress=off");
    argv.push_back("--cluster.on_job_end=exit");  // this launcher is their supervisor: the job ends when they do
    if (rank >= 0) argv.push_back("--node.rank=" + std::to_string(rank));
    // Every process of a local job is on this host: a worker's GPU is its rank.
    if (rank >= 0 && role == "worker") argv.push_back("--node.local_rank=" + std::to_string(rank));
    if (role == "ps") argv.push_back("--node.address=tcp://127.0.0.1:0");
    if (config.threads == 0 && threads > 0) argv.push_back("--threads=" + std::to_string(threads));
    if (config.metrics_port > 0) {
      // One host, one port each: the coordinator P, server r P+1+r, worker r P+1+servers+r (a
      // sync rank r: P+r). Ranks started by mpirun share one command line: any free port each.
      long port = config.metrics_port;
      if (role == "ps") port += 1 + rank;
      if (role == "worker") port = rank < 0 ? 0 : port + rank + (config.sync() ? 0 : 1 + config.servers);
      argv.push_back("--metrics.port=" + std::to_string(port));
    } else if (config.metrics_port == 0) {
      argv.push_back("--metrics.port=0");
    }
    return argv;
  };

  int wake[2];
  SHOAL_REQUIRE(pipe(wake) == 0, IoError, "pipe failed");
  g_wake_fd = wake[1];
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<Child> children;
  // The process whose exit code is the job's: the coordinator, or in a sync job the process
  // that runs it (rank 0, or mpirun for the mpi backend).
  std::string decider = "coordinator";
  const bool sync = config.sync();
  const bool use_mpirun =
      sync && (config.sync_backend == SyncBackend::mpi || config.sync_backend == SyncBackend::auto_select);
  // A sync world is started as a whole and, when a rank dies, restarted as a whole from the last
  // checkpoint (mpi, nccl, a sync job that is not elastic, or the loss of rank 0, which runs the
  // coordinator). With sync.elastic the survivors of any other rank re-form the world in place.
  auto start_world = [&](const std::vector<std::string>& extra) {
    auto with_extra = [&](std::vector<std::string> argv) {
      argv.insert(argv.end(), extra.begin(), extra.end());
      return argv;
    };
    if (use_mpirun) {
      SHOAL_LOG(log, info,
                "starting a local sync job through mpirun: " << config.workers << " ranks (" << worker_threads
                                                             << " threads each), coordinator in rank 0 at "
                                                             << coordinator);
      std::vector<std::string> argv{"mpirun",          "-np",       std::to_string(config.workers),
                                    "--oversubscribe", "--bind-to", "none"};
      if (geteuid() == 0) argv.push_back("--allow-run-as-root");
      for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
        std::string kv = *e;
        if (kv.rfind("SHOAL_", 0) == 0) {
          argv.push_back("-x");
          argv.push_back(kv.substr(0, kv.find('=')));
        }
      }
      auto worker = with_extra(command("worker", -1, worker_threads));
      argv.insert(argv.end(), worker.begin(), worker.end());
      children.push_back(spawn("mpirun", argv));
      decider = "mpirun";
    } else {
      SHOAL_LOG(log, info,
                "starting a local sync job: " << config.workers << " ranks (" << worker_threads
                                              << " threads each), coordinator in rank 0 at " << coordinator);
      for (int i = 0; i < config.workers; ++i)
        children.push_back(spawn("worker." + std::to_string(i), with_extra(command("worker", i, worker_threads))));
      decider = "worker.0";
    }
  };
  if (sync) {
    start_world({});
  } else {
    SHOAL_LOG(log, info,
              "starting a local job: coordinator at " << coordinator << ", " << config.servers << " servers, "
                                                      << config.workers << " workers (" << worker_threads
                                                      << " threads each)");
    children.push_back(spawn("coordinator", command("coordinator", -1, 1)));
    for (int i = 0; i < config.servers; ++i) children.push_back(spawn("ps." + std::to_string(i), command("ps", i, 1)));
    for (int i = 0; i < config.workers; ++i)
      children.push_back(spawn("worker." + std::to_string(i), command("worker", i, worker_threads)));
  }
  std::size_t width = 0;
  for (const auto& c : children) width = std::max(width, c.name.size());
  for (const auto& c : children) SHOAL_LOG(log, info, "started " << c.name << " (pid " << c.pid << ")");

  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> stop_at, kill_at;
  int result = -1;
  bool interrupted = false;
  auto terminate_all = [&](int sig) {
    for (auto& c : children)
      if (!c.exited) kill(c.pid, sig);
  };
  // A restarted sync world resumes from the newest checkpoint when this launch wrote one (with
  // checkpoint.resume as given otherwise: `never` must not pick up an older job's checkpoints).
  auto latest = [&]() -> std::optional<std::string> {
    if (config.checkpoint_dir.empty()) return std::nullopt;
    try {
      return read_latest(config.checkpoint_dir);
    } catch (const Error&) {
      return std::nullopt;
    }
  };
  const std::optional<std::string> latest_at_start = latest();
  int world_restarts = 0;
  bool world_restart_pending = false;
  while (true) {
    std::vector<pollfd> fds{{wake[0], POLLIN, 0}};
    for (auto& c : children)
      if (c.out >= 0) fds.push_back({c.out, POLLIN, 0});
    poll(fds.data(), fds.size(), 100);
    if (fds[0].revents & POLLIN) {
      char buf[16];
      (void)!read(wake[0], buf, sizeof(buf));
    }
    if (g_signal != 0 && !interrupted) {
      // Before reaping: children that saw the same Ctrl-C must not decide the exit code.
      interrupted = true;
      auto coordinator_child = std::find_if(children.begin(), children.end(),
                                            [](const Child& c) { return c.name == "coordinator" && !c.exited; });
      if (coordinator_child != children.end() && g_signal == SIGTERM) {
        // Preemption: the coordinator stops the job at a step boundary (after a last
        // checkpoint) and tells every process; the job's exit code is then the coordinator's.
        SHOAL_LOG(log, warn, "signal " << g_signal << ": asking the coordinator to stop the job at a step boundary");
        kill(coordinator_child->pid, SIGTERM);
        stop_at = Clock::now() + std::chrono::seconds(20);  // a backstop: then everyone is stopped
      } else {
        SHOAL_LOG(log, warn, "signal " << g_signal << ": stopping every process of the job");
        result = 128 + g_signal;
        stop_at = Clock::now();
      }
    } else if (g_signal != 0 && interrupted && stop_at && *stop_at > Clock::now() + std::chrono::seconds(1) &&
               g_second_signal) {
      stop_at = Clock::now();  // a second Ctrl-C: stop everyone now
    }
    for (auto& c : children) drain(c, width);
    for (auto& c : children) {
      int status = 0;
      if (!c.exited && waitpid(c.pid, &status, WNOHANG) == c.pid) {
        c.exited = true;
        c.code = status_code(status);
        drain(c, width);
        // Retried: a death by a signal, an internal or I/O error, a timeout (a worker dropped
        // from the job after a stall or a network cut). Not: a failed job (its code), bad
        // configuration, data, checkpoint or device, a protocol error (docs/checkpoint-format.md).
        const bool retryable = c.code >= 128 || c.code == static_cast<int>(ExitCode::internal) ||
                               c.code == static_cast<int>(ExitCode::io) ||
                               c.code == static_cast<int>(ExitCode::timeout);
        // A sync world whose rank died (or whose rank 0 gave up after losing one: peer lost) is
        // stopped and started again from the last checkpoint; with sync.elastic the loss of a
        // rank other than 0 is healed in place by the survivors.
        const bool world_failed = retryable || c.code == static_cast<int>(ExitCode::peer_lost);
        const bool healed_in_place = config.sync_elastic && !use_mpirun && c.name != decider;
        if (sync && world_failed && !healed_in_place && !interrupted && result < 0 && !world_restart_pending) {
          if (config.checkpoint_dir.empty()) {
            SHOAL_LOG(log, warn,
                      c.name << " exited with code " << c.code
                             << ": the sync world is not restarted (no checkpoint.dir to resume from)");
          } else if (world_restarts >= config.launch_max_restarts) {
            SHOAL_LOG(log, error,
                      c.name << " exited with code " << c.code << " and the sync world was restarted " << world_restarts
                             << " times already (launch.max_restarts): not again");
          } else {
            SHOAL_LOG(log, warn,
                      c.name << " exited with code " << c.code
                             << ": stopping the sync world to restart it from the last checkpoint ("
                             << world_restarts + 1 << " of " << config.launch_max_restarts << ", launch.max_restarts)");
            world_restart_pending = true;
            terminate_all(SIGTERM);
            kill_at = Clock::now() + std::chrono::seconds(3);
          }
        }
        if (world_restart_pending) continue;  // the rest of the world is being stopped
        // The supervisor: a dead parameter server is restarted (it restores its shard from the
        // last checkpoint), and a dead worker with launch.restart_workers (it rejoins the job; in
        // an elastic sync job it joins the re-formed world and takes the state of its members).
        // An async job's coordinator that died (a signal, a crash; not a job it ended with a code)
        // takes the job over from its live state when started again, while the others work on.
        const bool coordinator_died = c.name == "coordinator" && config.coordinator_failover() &&
                                      (c.code >= 128 || c.code == static_cast<int>(ExitCode::internal) ||
                                       c.code == static_cast<int>(ExitCode::io));
        const bool restartable =
            c.name.rfind("ps.", 0) == 0 || coordinator_died ||
            (config.launch_restart_workers && c.name.rfind("worker.", 0) == 0 && (!sync || healed_in_place));
        // A parameter server preempted (SIGTERM) exits 0 while the job goes on: its state is in a
        // checkpoint and the job waits for it, as a StatefulSet restarts its pod.
        const bool preempted_server = c.code == 0 && c.preempted;
        if ((retryable || preempted_server) && restartable && !interrupted && result < 0) {
          if (c.restarts < config.launch_max_restarts) {
            SHOAL_LOG(log, warn,
                      c.name << " exited with code " << c.code << "; restarting it (" << c.restarts + 1 << " of "
                             << config.launch_max_restarts << ", launch.max_restarts)");
            Child again = spawn(c.name, c.argv);
            again.restarts = c.restarts + 1;
            SHOAL_LOG(log, info, "started " << again.name << " (pid " << again.pid << ")");
            if (c.out >= 0) close(c.out);
            c = std::move(again);
            continue;
          }
          SHOAL_LOG(log, error,
                    c.name << " exited with code " << c.code << " and was restarted " << c.restarts
                           << " times already (launch.max_restarts): not again");
        }
        if (c.code != 0)
          SHOAL_LOG(log, warn, c.name << " exited with code " << c.code);
        else if (c.name == decider)
          SHOAL_LOG(log, info, c.name << " finished the job");
        // A process that cannot run at all (bad configuration, dataset or device) fails the
        // same way in every process of a local job: stop now with its code instead of letting
        // the coordinator wait out the start-up timeout.
        const bool cannot_run = c.code == static_cast<int>(ExitCode::usage) ||
                                c.code == static_cast<int>(ExitCode::data) ||
                                c.code == static_cast<int>(ExitCode::device);
        if (c.name != decider && cannot_run && !interrupted && result < 0) {
          SHOAL_LOG(log, warn,
                    c.name << " cannot run (" << exit_code_name(static_cast<ExitCode>(c.code))
                           << "): stopping every process of the job");
          result = c.code;
          stop_at = Clock::now();
        }
        if (c.name == decider && interrupted && result < 0) {
          result = c.code;  // stopped on a signal: 0 when the coordinator stopped the job cleanly
          stop_at = Clock::now() +
                    std::chrono::milliseconds(static_cast<std::int64_t>(1000 * (config.heartbeat_seconds * 2 + 3)));
        }
        if (c.name == decider && !interrupted && result < 0) {
          result = c.code;
          // The others are told by the coordinator and leave on their own; give them a moment.
          stop_at = Clock::now() +
                    std::chrono::milliseconds(static_cast<std::int64_t>(1000 * (config.heartbeat_seconds * 2 + 3)));
        }
      }
    }
    auto now = Clock::now();
    bool all_exited = std::all_of(children.begin(), children.end(), [](const Child& c) { return c.exited; });
    if (all_exited && world_restart_pending && !interrupted) {
      world_restart_pending = false;
      ++world_restarts;
      kill_at.reset();
      stop_at.reset();
      for (auto& c : children)
        if (c.out >= 0) close(c.out);
      children.clear();
      std::vector<std::string> extra;
      if (latest() != latest_at_start) {
        passed.erase(std::remove_if(passed.begin(), passed.end(),
                                    [](const std::string& a) { return a.rfind("--checkpoint.resume", 0) == 0; }),
                     passed.end());
        extra.push_back("--checkpoint.resume=auto");
      }
      coordinator = "tcp://127.0.0.1:" + std::to_string(pick_free_port());  // the old one may linger
      SHOAL_LOG(log, warn,
                "restarting the sync world (" << world_restarts << " of " << config.launch_max_restarts << "), "
                                              << (extra.empty() ? "as it first started (no checkpoint written yet)"
                                                                : "resuming from " + *latest()));
      start_world(extra);
      for (const auto& c : children) SHOAL_LOG(log, info, "started " << c.name << " (pid " << c.pid << ")");
      continue;
    }
    if (all_exited) break;
    if (stop_at && now >= *stop_at && !kill_at) {
      terminate_all(SIGTERM);
      kill_at = now + std::chrono::seconds(3);
    }
    if (kill_at && now >= *kill_at) {
      terminate_all(SIGKILL);
      kill_at = now + std::chrono::hours(1);
    }
  }
  for (auto& c : children) drain(c, width);
  if (result == 0 && !g_final_line.empty()) std::printf("%s\n", g_final_line.c_str());
  close(wake[0]);
  close(wake[1]);
  g_wake_fd = -1;
  return result < 0 ? 1 : result;
}

}  // namespace shoal
