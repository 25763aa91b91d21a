#include "telemetry/status_server.h"

namespace shoal {

StatusServer::StatusServer(Telemetry& telemetry, const std::string& host, int port, Logger log) {
  http::ServerOptions options;
  options.host = host;
  options.port = port;
  options.threads = 1;
  options.max_body = 4096;  // probes and scrapes carry no body
  options.request_timeout_s = 5;
  options.idle_timeout_s = 30;
  options.what = "metrics.port";
  auto handler = [&telemetry](http::Request&& req, http::Responder respond) {
    http::Response res;
    if (req.method != "GET" && req.method != "HEAD") {
      res.status = 405;
      res.headers.emplace_back("Allow", "GET, HEAD");
      res.body = "only GET and HEAD\n";
    } else if (req.path == "/healthz") {
      res.body = "ok\n";
    } else if (req.path == "/readyz") {
      const bool ready = telemetry.ready.load();
      res.status = ready ? 200 : 503;
      res.body = ready ? "ready\n" : "not ready\n";
    } else if (req.path == "/metrics") {
      res.content_type = "text/plain; version=0.0.4; charset=utf-8";
      res.body = telemetry.metrics.render();
    } else {
      res.status = 404;
      res.body = "not found: /healthz, /readyz and /metrics are served\n";
    }
    respond(std::move(res));
  };
  server_ = std::make_unique<http::Server>(options, handler, log);
  SHOAL_LOG(log, info, "serving /healthz /readyz /metrics on http://" << host << ":" << server_->port());
}

StatusServer::~StatusServer() = default;

}  // namespace shoal
