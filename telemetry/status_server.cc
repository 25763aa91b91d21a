#include "telemetry/status_server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <chrono>

#include "base/error.h"

namespace shoal {

StatusServer::StatusServer(Telemetry& telemetry, const std::string& host, int port, Logger log)
    : server_(std::make_unique<httplib::Server>()) {
  httplib::Server& s = *server_;
  // Probes and scrapes are small and rare: one thread serves them, one request per connection
  // (no keep-alive, so an idle scraper's connection does not hold the thread), and a client that
  // stalls is dropped after two seconds. One thread, because httplib (Debian's shared library,
  // not built for ThreadSanitizer) initialises a function-local static set of method names on
  // its first request: threads that parse requests concurrently then read it through the
  // static's guard, whose acquiring load TSan cannot see in an uninstrumented library, and TSan
  // reports a race that is not one (docs/monitoring.md). With one parsing thread there is no
  // such hand-over, and no suppression is needed that could hide a race of our own.
  s.new_task_queue = [] { return new httplib::ThreadPool(1); };
  s.set_read_timeout(2, 0);
  s.set_write_timeout(2, 0);
  s.set_keep_alive_max_count(1);
  s.set_payload_max_length(4096);
  // httplib's default also sets SO_REUSEPORT, which lets a second process bind the same port
  // and take half the scrapes: only SO_REUSEADDR (a restarted process rebinds at once).
  s.set_socket_options([](socket_t sock) {
    int on = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  });
  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
  s.Get("/readyz", [&telemetry](const httplib::Request&, httplib::Response& res) {
    const bool ready = telemetry.ready.load();
    res.status = ready ? 200 : 503;
    res.set_content(ready ? "ready\n" : "not ready\n", "text/plain");
  });
  s.Get("/metrics", [&telemetry](const httplib::Request&, httplib::Response& res) {
    res.set_content(telemetry.metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  s.set_pre_routing_handler([](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "GET" || req.method == "HEAD") return httplib::Server::HandlerResponse::Unhandled;
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
    res.set_content("only GET and HEAD\n", "text/plain");
    return httplib::Server::HandlerResponse::Handled;
  });
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.status == 404) res.set_content("not found: /healthz, /readyz and /metrics are served\n", "text/plain");
  });
  s.set_exception_handler([log](const httplib::Request& req, httplib::Response& res, std::exception_ptr e) {
    Failure f = failure_of(e);
    SHOAL_LOG(log, warn, "status endpoint: " << req.path << " failed: " << f.message);
    res.status = 500;
    res.set_content("internal error\n", "text/plain");
  });

  if (port == 0) {
    port_ = s.bind_to_any_port(host);
  } else {
    port_ = s.bind_to_port(host, port) ? port : -1;
  }
  SHOAL_REQUIRE(port_ > 0, ConfigError,
                "metrics.port " << port << ": cannot listen on " << host << ":" << port
                                << " (address in use, or not an address of this host?)");
  listener_ = std::thread([&s] { s.listen_after_bind(); });
  // httplib's stop() does nothing before the listening loop has started: wait for it, so the
  // destructor can always stop it.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!s.is_running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!s.is_running()) {
    s.stop();
    listener_.join();
    SHOAL_THROW(InternalError, "the status endpoint on " << host << ":" << port_ << " did not start listening");
  }
  SHOAL_LOG(log, info, "serving /healthz /readyz /metrics on http://" << host << ":" << port_);
}

StatusServer::~StatusServer() {
  server_->stop();
  if (listener_.joinable()) listener_.join();
}

}  // namespace shoal
