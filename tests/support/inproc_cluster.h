// A whole asynchronous job inside one test process: the coordinator, parameter servers and
// workers run as threads over inproc://, with the same classes and role functions as the
// `shoal` processes, so lifecycle races are exercised in milliseconds (and under
// ThreadSanitizer). An optional FaultPlan drops, delays, duplicates or reorders messages.
// A role's thread ends with the exit code `shoal` would exit with; a worker's stop flag is
// what SIGTERM sets in the process.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/log.h"
#include "comm/fault_injection.h"
#include "comm/transport.h"
#include "config/config.h"

namespace shoal {
class Coordinator;
}

namespace shoal::testing {

// Keeps every log line and wakes whoever waits for one.
class CapturingSink final : public LogSink {
 public:
  explicit CapturingSink(bool echo) : echo_(echo) {}
  void write_line(std::string_view line) override;
  // True once a line containing every one of `needles` was written (or had been).
  bool wait_for(const std::vector<std::string>& needles, std::chrono::milliseconds timeout);
  // True once `n` lines contain every one of `needles`.
  bool wait_for_count(const std::vector<std::string>& needles, int n, std::chrono::milliseconds timeout);
  std::string text() const;
  // Lines containing every one of `needles`.
  int count(const std::vector<std::string>& needles) const;
  // The first line containing `needle` ("" if none).
  std::string first_line_with(const std::string& needle) const;

 private:
  bool echo_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> lines_;
};

// A small, fast job: mlp on the first 1,200 Fashion-MNIST images, 1 epoch, 1 thread per role,
// 2 servers and 2 workers, short heartbeats and timeouts.
JobConfig small_job();

class InprocCluster {
 public:
  // `faults` (optional) must outlive the cluster.
  // `coordinator_over_tcp`: the coordinator listens on a loopback port instead of inproc://, so
  // that one started again after kill_coordinator() is reached again (an inproc:// peer that
  // went away is not reconnected).
  explicit InprocCluster(JobConfig config, FaultPlan* faults = nullptr, bool coordinator_over_tcp = false);
  ~InprocCluster();  // stops whatever still runs and joins every thread
  InprocCluster(const InprocCluster&) = delete;
  InprocCluster& operator=(const InprocCluster&) = delete;

  // `startup_timeout_seconds` (when > 0) overrides the job's for the coordinator alone.
  void start_coordinator(double startup_timeout_seconds = 0);
  void start_server(int rank);
  // `edit` (optional) changes this worker's settings: a process started with another job file.
  void start_worker(int rank, const std::function<void(JobConfig&)>& edit = {});
  void start_all();  // coordinator, then every server and worker of the config
  // What SIGTERM does to a `shoal worker` process.
  void stop_worker(int rank);
  // What SIGTERM does to a `shoal ps` process (a preemption).
  void stop_server(int rank);
  // What SIGTERM does to a `shoal coordinator` process (the job's preemption): the job stops at a
  // step boundary and every role exits 0.
  void preempt_coordinator() { coordinator_term_ = true; }
  // What kill -9 does to a `shoal coordinator` process: it stops at once, telling nobody.
  // Returns once it has.
  void kill_coordinator();

  // The exit code of "coordinator", "ps.N" or "worker.N" (-1: still running after `timeout`).
  int wait(const std::string& role, std::chrono::milliseconds timeout);
  // The last line of a role that failed ("" if it succeeded or runs).
  std::string failure(const std::string& role);
  CapturingSink& log() { return *sink_; }
  const JobConfig& config() const { return config_; }

 private:
  struct Role {
    std::thread thread;
    bool done = false;
    int code = 0;
    std::string failure;
  };
  void launch(const std::string& name, std::function<void()> body);

  JobConfig config_;
  std::shared_ptr<CapturingSink> sink_;
  Network network_;
  std::mutex mutex_;
  std::condition_variable finished_;
  std::map<std::string, Role> roles_;
  std::map<int, std::unique_ptr<std::atomic<bool>>> stops_, server_stops_;
  std::vector<std::unique_ptr<std::atomic<bool>>> retired_stops_;  // of processes started again
  std::map<int, int> server_starts_;                               // per rank
  // Guarded by mutex_: the running coordinator (to stop it), and whether it should stop at once.
  Coordinator* coordinator_ = nullptr;
  bool coordinator_stop_ = false;
  std::atomic<bool> coordinator_term_{false};
};

}  // namespace shoal::testing
