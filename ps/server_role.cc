#include "ps/server_role.h"

#include <netdb.h>
#include <unistd.h>

#include <optional>
#include <string>

#include "base/error.h"
#include "compute/devices/devices.h"
#include "coordinator/client/control_client.h"
#include "data/source.h"
#include "models/model.h"
#include "models/model_file.h"
#include "ps/parameter_server.h"

namespace shoal {

namespace {
std::string this_host_fqdn() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) return "";
  // A StatefulSet pod's /etc/hosts names it by its FQDN (pod.service.namespace.svc...): the name
  // other pods resolve through the headless Service. Else the short name.
  addrinfo hints{}, *res = nullptr;
  hints.ai_flags = AI_CANONNAME;
  hints.ai_socktype = SOCK_STREAM;
  std::string name = host;
  if (getaddrinfo(host, nullptr, &hints, &res) == 0 && res != nullptr) {
    if (res->ai_canonname != nullptr && *res->ai_canonname != 0) name = res->ai_canonname;
    freeaddrinfo(res);
  }
  return name;
}

// The server's counters and gauges for the status endpoint, moved on from its stats.
class ServerTelemetry {
 public:
  explicit ServerTelemetry(MetricsRegistry& m)
      : pushes_(m.counter("shoal_ps_pushes_total", "push messages applied")),
        pulls_(m.counter("shoal_ps_pulls_total", "pulls answered (a push that asks for its chunks back counts)")),
        updates_(m.counter("shoal_ps_chunk_updates_total", "chunk updates applied")),
        parked_(m.counter("shoal_ps_parked_pulls_total", "pulls that waited for stragglers (the staleness bound)")),
        push_bytes_(m.counter("shoal_ps_push_bytes_total", "gradient bytes received")),
        pull_bytes_(m.counter("shoal_ps_pull_bytes_total", "parameter bytes sent")),
        clock_(m.gauge("shoal_ps_clock", "updates applied to the most updated chunk")),
        live_(m.gauge("shoal_ps_live_workers", "workers taking part in the clocks")) {}

  void update(const ServerStats& s, std::uint64_t clock, std::size_t live) {
    pushes_.add(static_cast<double>(s.pushes - last_.pushes));
    pulls_.add(static_cast<double>(s.pulls - last_.pulls));
    updates_.add(static_cast<double>(s.updates - last_.updates));
    parked_.add(static_cast<double>(s.parked - last_.parked));
    push_bytes_.add(static_cast<double>(s.push_bytes - last_.push_bytes));
    pull_bytes_.add(static_cast<double>(s.pull_bytes - last_.pull_bytes));
    last_ = s;
    clock_.set(static_cast<double>(clock));
    live_.set(static_cast<double>(live));
  }

 private:
  Counter &pushes_, &pulls_, &updates_, &parked_, &push_bytes_, &pull_bytes_;
  Gauge &clock_, &live_;
  ServerStats last_;
};
}  // namespace

void run_server_role(Network& network, const JobConfig& config, Logger log, const std::atomic<bool>* stop,
                     Telemetry* telemetry) {
  // One thread per backend loop: the server spreads its updates by chunk (UpdatePool) instead.
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  ParameterServer server(network, config.node_address, *backend, log);
  Seconds timeout(config.request_timeout_seconds);
  ControlClient control(network, config.coordinator_address, "ps.starting-" + std::to_string(getpid()), log, timeout);
  const std::string settings = job_settings_text(config, SettingsRegistry());
  control.set_job_settings(settings, settings_digest(settings));
  const std::string address = ParameterServer::advertised(server.endpoint(), config.node_advertise, this_host_fqdn());
  auto registered = control.register_node(wire::Role::SERVER, static_cast<int>(config.node_rank), address,
                                          Seconds(config.startup_timeout_seconds), stop);
  if (!registered) {
    SHOAL_LOG(log, info, "stopped on request before it registered (it had no part in the job yet)");
    return;
  }
  std::string id = *registered;
  log = log.with_role(id);
  server.set_log(log);
  SHOAL_LOG(log, info, "listening on " << server.endpoint() << ", registered as " << id);
  std::optional<ServerTelemetry> gauges;
  if (telemetry != nullptr) {
    telemetry->ready = true;
    gauges.emplace(telemetry->metrics);
    server.set_staleness_histogram(&telemetry->metrics.histogram(
        "shoal_ps_staleness", "per pushed chunk: updates other workers made to it since the pusher pulled it",
        {0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64}));
  }
  // The coordinator ends the job (and says so) if the cluster does not assemble in time; this
  // deadline is a backstop for a coordinator that went silent.
  auto fetched = control.fetch_table(2 * Seconds(config.startup_timeout_seconds), stop);
  if (!fetched) {
    control.leave();
    SHOAL_LOG(log, info, "stopped on request before the job started; left the job");
    return;
  }
  PartitionTable table = std::move(*fetched);
  std::size_t index = table.servers.size();
  for (std::size_t i = 0; i < table.servers.size(); ++i)
    if (table.servers[i].id == id) index = i;
  SHOAL_REQUIRE(index < table.servers.size(), ProtocolError, "the partition table has no entry for " << id);

  // Every process builds the same initial model from the seed; this server keeps its part.
  DatasetInfo info = probe_train_set(config.data, log);
  auto model = build_model(config.model, Shape{info.channels, info.height, info.width}, info.classes);
  model->build(*backend, config.seed);
  SHOAL_REQUIRE(model->params().parameter_count() == table.total_elements, ProtocolError,
                "the partition table covers " << table.total_elements << " values but model " << config.model << " has "
                                              << model->params().parameter_count());
  ServerOptions options = server_options(config, table);
  if (!config.optimizer.decay_bias_and_norm) options.no_decay = model->params().bias_and_norm_ranges();
  server.start(id, table, index, model->params().values().data<float>(), options);
  model.reset();
  SHOAL_LOG(log, info,
            "serving keys [" << table.servers[index].first_key << ", " << table.servers[index].end_key
                             << "): " << table.server_elements(index) << " values; staleness " << config.staleness);

  Heartbeat heartbeat(network, config.coordinator_address, id, log, Seconds(config.heartbeat_seconds),
                      Seconds(config.dead_after_seconds));
  if (config.coordinator_failover()) {
    // The coordinator may die and be restarted: this shard keeps serving and registers again.
    heartbeat.enable_rejoin(Heartbeat::Identity{wire::Role::SERVER, rank_of_member(id), address, "cpu", settings,
                                                settings_digest(settings)},
                            Seconds(config.coordinator_grace_seconds));
    heartbeat.set_claim(RejoinClaim{table.version, {}});
    // Its requests (checkpoint files, a preemption) are not worth a stalled shard: given up
    // when the coordinator goes silent.
    control.watch_coordinator(&heartbeat, /*when_silent=*/true);
  }
  std::uint64_t generation = 0;
  std::optional<JobEnd> end;
  // SIGTERM: asked the coordinator whether it may go; stays (serving) until told so, or until
  // this deadline.
  std::optional<std::chrono::steady_clock::time_point> leave_by;
  std::string why_go;
  auto may_go = [&] {
    try {
      auto answer = control.preempt();
      if (!answer.wait) why_go = answer.reason;
      return !answer.wait;
    } catch (const TimeoutError&) {
      why_go = "the coordinator did not answer";
      return true;
    }
  };
  while (!(end = heartbeat.job_end())) {
    heartbeat.check();
    if (stop != nullptr && stop->load() && !leave_by) {
      SHOAL_LOG(log, warn, "SIGTERM: asking the coordinator for a checkpoint of this shard before leaving");
      leave_by = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
      if (may_go()) break;
    }
    server.serve(std::chrono::milliseconds(20));
    try {
      if (auto written = server.take_written_checkpoint()) {
        control.report_checkpoint(*written);
        if (leave_by && may_go()) break;
      }
    } catch (const Error& e) {
      // The coordinator abandons a checkpoint it gets no files for; training goes on.
      SHOAL_LOG(log, error, "checkpoint not written: " << e.what());
    }
    if (leave_by && std::chrono::steady_clock::now() > *leave_by) {
      why_go = "no checkpoint held this shard within cluster.request_timeout_seconds";
      break;
    }
    if (heartbeat.generation() != generation) {
      generation = heartbeat.generation();
      server.set_live_workers(heartbeat.live_workers());
    }
    const std::uint64_t applied = server.clock();
    heartbeat.set_clock(applied);
    if (gauges) gauges->update(server.stats(), applied, server.live_worker_count());
  }
  const ServerStats& s = server.stats();
  if (!end) {  // stopped on SIGTERM
    control.leave();
    SHOAL_LOG(log, warn,
              ParameterServer::kPreemptedLine << why_go << "; " << s.pushes << " pushes, " << s.pulls << " pulls, "
                                              << s.updates << " chunk updates");
    return;
  }
  SHOAL_LOG(log, info,
            "shutting down (" << (end->code == ExitCode::ok ? "the job is over" : "the job failed: " + end->reason)
                              << "): " << s.pushes << " pushes, " << s.pulls << " pulls, " << s.updates
                              << " chunk updates, " << s.parked << " pulls waited for stragglers, "
                              << server.counters().total_dropped() << " messages dropped");
  if (end->code != ExitCode::ok) throw_job_failure(*end);
}

}  // namespace shoal
