// Setting up a synchronous worker's world: who it is (rank, size: from Open MPI's environment
// under mpirun, else node.rank and cluster.workers), which collective backend (sync.backend),
// the coordinator that rank 0 runs as a thread of its own, and the collective itself.
#pragma once

#include <exception>
#include <memory>
#include <string>
#include <thread>

#include "compute/backend.h"
#include "collective/collective.h"
#include "config/config.h"
#include "coordinator/client/control_client.h"
#include "base/log.h"
#include "telemetry/metrics_file.h"
#include "telemetry/telemetry.h"
#include "comm/transport.h"

namespace shoal {

class Coordinator;

struct SyncSetup {
  WorldInfo world;
  SyncBackend backend = SyncBackend::gloo;  // resolved: mpi, gloo or nccl
  bool under_mpirun = false;
  std::string why;  // how auto chose, for the log
};

// Checks the configuration against the environment; ConfigError or DeviceError naming the
// setting otherwise (mpi without mpirun, nccl without a GPU build, a rank outside the world).
SyncSetup resolve_sync_setup(const JobConfig& config, bool cuda_device);

// The IPv4 address of `interface`, or (empty name) of the first interface that is up and not
// loopback; 127.0.0.1 if there is none. IoError naming an interface that does not exist.
std::string host_address(const std::string& interface);
// The local address this host uses to reach the host of `zmq_address` ("tcp://10.0.0.5:7600"):
// the one Gloo should bind so its peers reach it the way they reach the coordinator.
std::string address_towards(const std::string& zmq_address);

// Rank 0 of a sync job runs the coordinator as a thread. It binds at construction (an address
// in use is an IoError then) and runs until every process heard how the job ended.
class EmbeddedCoordinator {
 public:
  EmbeddedCoordinator(Network& network, const JobConfig& config, Logger log, Telemetry* telemetry = nullptr);
  ~EmbeddedCoordinator();  // ends the job if it is not over, then waits (bounded) for the thread
  EmbeddedCoordinator(const EmbeddedCoordinator&) = delete;
  EmbeddedCoordinator& operator=(const EmbeddedCoordinator&) = delete;
  std::string endpoint() const;

 private:
  JobConfig config_;  // the coordinator keeps a reference
  MetricsWriter metrics_;
  std::unique_ptr<Coordinator> coordinator_;
  std::thread thread_;
};

// The collective of this rank's world. Gloo is formed through the coordinator's store under a
// key prefix of the membership generation; mpi uses the world mpirun started.
// NCCL runs on the backend's GPU, ordered after the work issued on its compute stream. `watch`
// (optional) is polled while the rendezvous waits for the other ranks; it throws to end it.
std::unique_ptr<Collective> make_collective(const SyncSetup& setup, const JobConfig& config, ControlClient& control,
                                            std::uint64_t generation, Backend& backend,
                                            std::function<void()> watch = {});

}  // namespace shoal
