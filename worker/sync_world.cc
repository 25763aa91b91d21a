#include "worker/sync_world.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/environment.h"
#include "base/error.h"
#include "collective/gloo/collective_gloo.h"
#include "collective/mpi/collective_mpi.h"
#include "compute/devices/mig.h"
#include "coordinator/coordinator.h"
#ifdef SHOAL_WITH_CUDA
#include "collective/nccl/collective_nccl.h"
#endif

namespace shoal {

SyncSetup resolve_sync_setup(const JobConfig& config, bool cuda_device) {
  SyncSetup s;
  s.under_mpirun = mpi::launched_by_mpirun();
  s.backend = config.sync_backend;
  if (s.backend == SyncBackend::auto_select) {
    if (cuda_device) {
      s.backend = SyncBackend::nccl;
      s.why = "auto: GPU buffers";
    } else if (s.under_mpirun) {
      s.backend = SyncBackend::mpi;
      s.why = "auto: started by mpirun";
    } else {
      s.backend = SyncBackend::gloo;
      s.why = "auto: not under mpirun, CPU buffers";
    }
  } else {
    s.why = "sync.backend";
  }
  if (cuda_device) {
    // NCCL cannot all-reduce between MIG instances (of one GPU or of several): a sync job's
    // ranks on MIG slices would fail in their first collective, or hang.
    auto mig = mig_slice();
    SHOAL_REQUIRE(!mig, ConfigError,
                  "strategy = sync on a MIG slice (" << mig->id << (mig->name.empty() ? "" : ", " + mig->name) << "; "
                                                     << mig->how
                                                     << "): NCCL cannot all-reduce between MIG instances; run "
                                                        "an async job (strategy = async, parameter servers) on "
                                                        "MIG slices, or give each sync rank a whole GPU");
  }
  SHOAL_REQUIRE(s.backend != SyncBackend::mpi || s.under_mpirun, ConfigError,
                "sync.backend = mpi needs the job started by mpirun (mpirun -np N shoal worker JOB.ini, or shoal "
                "launch JOB.ini --local); use gloo to start ranks without it");
#ifndef SHOAL_WITH_CUDA
  SHOAL_REQUIRE(s.backend != SyncBackend::nccl, DeviceError, "sync.backend = nccl needs a build with CUDA and NCCL");
#endif
  SHOAL_REQUIRE(s.backend != SyncBackend::nccl || cuda_device, ConfigError,
                "sync.backend = nccl all-reduces GPU buffers: it needs device = cuda");
  SHOAL_REQUIRE(s.backend == SyncBackend::nccl || !cuda_device, ConfigError,
                "sync.backend = " << sync_backend_name(s.backend)
                                  << " all-reduces host memory, but this worker computes on a GPU: use sync.backend = "
                                     "nccl (or auto), or device = cpu");
  SHOAL_REQUIRE(
      !config.sync_elastic || s.backend == SyncBackend::gloo, ConfigError,
      "sync.elastic needs sync.backend = gloo, not "
          << sync_backend_name(s.backend)
          << (s.backend == SyncBackend::mpi ? " (Open MPI 4 cannot shrink a world: a lost rank ends the world, and "
                                              "shoal launch restarts it from the last checkpoint)"
                                            : " (in-place re-forming over NCCL is not built yet: shoal launch restarts "
                                              "the world from the last checkpoint)"));
  if (auto env = mpi::world_from_environment()) {
    s.world = *env;
  } else {
    SHOAL_REQUIRE(config.node_rank >= 0, ConfigError,
                  "a sync worker started without mpirun needs its rank: node.rank (0 .. cluster.workers - 1)");
    SHOAL_REQUIRE(config.node_rank < config.workers, ConfigError,
                  "node.rank = " << config.node_rank << " is outside a world of cluster.workers = " << config.workers);
    s.world.rank = static_cast<int>(config.node_rank);
    s.world.size = static_cast<int>(config.workers);
    s.world.local_rank = s.world.rank;
  }
  return s;
}

std::string host_address(const std::string& interface) {
  ifaddrs* list = nullptr;
  SHOAL_REQUIRE(getifaddrs(&list) == 0, IoError, "cannot list the network interfaces");
  std::string found;
  bool named_exists = false;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET) continue;
    bool loopback = (a->ifa_flags & IFF_LOOPBACK) != 0, up = (a->ifa_flags & IFF_UP) != 0;
    if (!interface.empty()) {
      if (interface != a->ifa_name) continue;
      named_exists = true;
    } else if (loopback || !up) {
      continue;
    }
    char text[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof(text));
    found = text;
    break;
  }
  freeifaddrs(list);
  SHOAL_REQUIRE(interface.empty() || named_exists, IoError,
                "network interface '" << interface << "' (sync.interface) has no IPv4 address on this host");
  return found.empty() ? "127.0.0.1" : found;
}

std::string address_towards(const std::string& zmq_address) {
  // "tcp://HOST:PORT" -> HOST, resolved; a UDP socket "connected" there names the local
  // address the kernel routes from (no packet is sent).
  if (zmq_address.rfind("tcp://", 0) != 0) return "127.0.0.1";  // inproc://, ipc://: this host
  std::string rest = zmq_address.substr(6);
  auto colon = rest.rfind(':');
  std::string host = colon == std::string::npos ? rest : rest.substr(0, colon);
  if (host.empty() || host == "*" || host == "0.0.0.0") return host_address("");
  addrinfo hints{}, *res = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  if (getaddrinfo(host.c_str(), "9", &hints, &res) != 0 || res == nullptr) return host_address("");
  std::string out;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char text[INET_ADDRSTRLEN] = {};
      inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text));
      out = text;
    }
  }
  if (fd >= 0) close(fd);
  freeaddrinfo(res);
  return out.empty() ? host_address("") : out;
}

EmbeddedCoordinator::EmbeddedCoordinator(Network& network, const JobConfig& config, Logger log, Telemetry* telemetry)
    : config_(config),
      metrics_(config.metrics_file.empty() ? MetricsWriter() : MetricsWriter(config.metrics_file)),
      coordinator_(std::make_unique<Coordinator>(network, config_, log.with_role("coordinator"), metrics_)) {
  coordinator_->set_telemetry(telemetry);
  thread_ = std::thread([this] {
    try {
      coordinator_->run();
    } catch (...) {
      // The coordinator told every process how the job ended; each exits with that code.
    }
  });
}

EmbeddedCoordinator::~EmbeddedCoordinator() {
  // If the job is not over (this rank failed before it could say so), it ends now: the
  // coordinator tells the other ranks, waiting at most two liveness periods for them.
  coordinator_->request_stop();
  if (thread_.joinable()) thread_.join();
}

std::string EmbeddedCoordinator::endpoint() const { return coordinator_->endpoint(); }

std::unique_ptr<Collective> make_collective(const SyncSetup& setup, const JobConfig& config, ControlClient& control,
                                            std::uint64_t generation, Backend& backend, std::function<void()> watch) {
  if (setup.backend == SyncBackend::mpi) {
    mpi::init();
    return make_mpi_collective();
  }
  CoordinatorStore store(control, Seconds(config.sync_timeout_seconds), std::move(watch));
  std::string prefix = "gen" + std::to_string(generation) + "/" + sync_backend_name(setup.backend) + "/";
#ifdef SHOAL_WITH_CUDA
  if (setup.backend == SyncBackend::nccl)
    return make_nccl_collective(store, setup.world, prefix, Seconds(config.sync_timeout_seconds),
                                NcclPlacement{backend.device().index, backend.native_stream()});
#endif
  GlooOptions options;
  options.interface = config.sync_interface;
  options.hostname = address_towards(config.coordinator_address);
  options.prefix = prefix;
  options.timeout = Seconds(config.sync_timeout_seconds);
  return make_gloo_collective(store, setup.world, options);
}

}  // namespace shoal
