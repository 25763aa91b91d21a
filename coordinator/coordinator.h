// The coordinator (`shoal coordinator`): the control plane of an asynchronous job. It waits for
// the configured servers and workers to register, publishes the partition table, leases data
// shards, watches heartbeats (a dead worker's shards go back to the queue), has a worker
// evaluate the model after each epoch, and ends the job. It never touches tensor bytes.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "coordinator/lease_book.h"
#include "coordinator/membership.h"
#include "core/config.h"
#include "core/control_client.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/partition.h"
#include "core/transport.h"

namespace shoal {

struct CoordinatorResult {
  double final_test_accuracy = 0;
  std::vector<EpochReport> epochs;
};

class Coordinator {
 public:
  Coordinator(Network& network, const JobConfig& config, Logger log, MetricsWriter& metrics);
  const std::string& endpoint() const { return socket_.endpoint(); }
  // Runs the job to its end and tells every process how it ended. A failed job (the cluster
  // did not assemble in time: code `timeout`; a parameter server or every worker lost:
  // `peer_lost`) is thrown as an Error with that code after everyone was told.
  CoordinatorResult run();
  // Ends the job early (the code every process then exits with is `timeout`).
  void request_stop() { stop_ = true; }
  const ProtocolCounters& counters() const { return socket_.counters(); }

 private:
  void handle(Incoming& in, Clock::time_point now);
  void publish_table();
  void reply_error(const Incoming& in, wire::ErrorCode code, const std::string& message);
  void check_liveness(Clock::time_point now);
  // A worker died or left: its leases go back to the queue.
  void worker_gone(const std::string& id, const std::string& how);
  void report_epochs(Clock::time_point now);
  bool everyone_told() const;
  // Ends the job (the first end wins) and says so once.
  void end_job(ExitCode code, const std::string& reason);
  void reply_register(const Incoming& in, const Member& m);
  // Once the job is over, the answer to whatever a process asks: how it ended.
  void reply_job_over(const Incoming& in);

  const JobConfig& config_;
  Logger log_;
  MetricsWriter& metrics_;
  ServerSocket socket_;
  Membership members_;
  std::int64_t train_samples_ = 0;
  std::int64_t model_elements_ = 0;
  std::optional<PartitionTable> table_;
  bool sync_;
  std::int64_t servers_wanted_;
  std::unique_ptr<WorkBook> book_;
  static constexpr std::size_t kMaxStoreKeys = 65536;
  std::map<std::string, std::string> store_;  // the rendezvous store (sync jobs)
  std::map<std::string, bool> told_;                    // members told that the job is over
  std::map<std::uint64_t, std::string> registrations_;  // register nonce -> member id
  Clock::time_point started_;
  std::atomic<bool> stop_{false};
  CoordinatorResult result_;
  std::optional<JobEnd> end_;  // set once the job is over
};

}  // namespace shoal
