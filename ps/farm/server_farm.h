// N parameter servers as threads of this process, each with its own ZeroMQ context as if it
// were its own process, serving a partition table over loopback TCP until destroyed. For
// benchmarks (bench/ps_bandwidth.cc) and tests that drive a worker strategy directly.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/partition.h"
#include "comm/transport.h"
#include "ps/parameter_server.h"

namespace shoal {

class ServerFarm {
 public:
  // `elements` parameters cut into chunks of at most `chunk_elements`, starting from `initial`
  // everywhere, for the workers named in `workers` (the table's live workers: the ones whose
  // clocks the servers wait on).
  ServerFarm(int servers, std::int64_t elements, std::int64_t chunk_elements, float initial,
             std::vector<std::string> workers, const ServerOptions& options);
  // The same for one worker named `worker`.
  ServerFarm(int servers, std::int64_t elements, std::int64_t chunk_elements, float initial, const std::string& worker,
             const ServerOptions& options);
  ~ServerFarm();
  ServerFarm(const ServerFarm&) = delete;
  ServerFarm& operator=(const ServerFarm&) = delete;

  const PartitionTable& table() const { return table_; }

 private:
  struct Slot {
    Network context;
    std::unique_ptr<Backend> backend;
    std::unique_ptr<ParameterServer> server;
    std::thread thread;
  };
  PartitionTable table_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::atomic<bool> stop_{false};
};

}  // namespace shoal
