// The HTTP side of a Telemetry, for Kubernetes' probes and Prometheus (metrics.port):
//   GET /healthz  200 "ok" while the process serves at all (a liveness probe);
//   GET /readyz   200 "ready" once the role is ready (registered; the coordinator: the job
//                 assembled), 503 "not ready" before;
//   GET /metrics  the Prometheus text format (version 0.0.4).
// Anything else is 404, a method other than GET or HEAD 405. HTTP itself is cpp-httplib's
// (Debian's libcpp-httplib): one serving thread and a listener, one request per connection,
// short read and write timeouts so a slow client cannot hold the endpoint for long.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "base/log.h"
#include "telemetry/telemetry.h"

namespace httplib {
class Server;
}

namespace shoal {

class StatusServer {
 public:
  // Listens on host:port (port 0: any free port, see port()) and serves until destroyed.
  // Throws ConfigError naming the address if it cannot listen.
  StatusServer(Telemetry& telemetry, const std::string& host, int port, Logger log);
  ~StatusServer();  // stops listening and joins its threads
  StatusServer(const StatusServer&) = delete;
  StatusServer& operator=(const StatusServer&) = delete;

  int port() const { return port_; }

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread listener_;
  int port_ = 0;
};

}  // namespace shoal
