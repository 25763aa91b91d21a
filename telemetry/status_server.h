// The HTTP side of a Telemetry, for Kubernetes' probes and Prometheus (metrics.port):
//   GET /healthz  200 "ok" while the process serves at all (a liveness probe);
//   GET /readyz   200 "ready" once the role is ready (registered; the coordinator: the job
//                 assembled), 503 "not ready" before;
//   GET /metrics  the Prometheus text format (version 0.0.4).
// Anything else is 404, a method other than GET or HEAD 405. HTTP is the event-driven server of
// http/server.h on one thread: idle, slow or byte-at-a-time clients hold a socket each, never
// the thread, so a probe is answered at once however many of them are connected.
#pragma once

#include <memory>
#include <string>

#include "base/log.h"
#include "http/server.h"
#include "telemetry/telemetry.h"

namespace shoal {

class StatusServer {
 public:
  // Listens on host:port (port 0: any free port, see port()) and serves until destroyed.
  // Throws ConfigError naming the address if it cannot listen.
  StatusServer(Telemetry& telemetry, const std::string& host, int port, Logger log);
  ~StatusServer();  // stops listening and joins its thread
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  int port() const { return server_->port(); }
  std::int64_t open_connections() const { return server_->open_connections(); }

 private:
  std::unique_ptr<http::Server> server_;
};

}  // namespace shoal
