// An event-driven HTTP/1.1 server (Boost.Beast over Asio, from Debian's libboost-dev): a few
// threads multiplex every connection, so idle or slow clients cost a socket and a timer each and
// never a thread. It serves the training roles' status endpoint (/healthz, /readyz, /metrics)
// and `shoal serve`.
//
// Every wait has a deadline: a request must arrive whole within `request_timeout` of its first
// byte being awaited (a client sending a byte at a time is dropped when it runs out), a kept-alive
// connection is closed after `idle_timeout` without a request, a response must be written within
// `write_timeout`. Bodies above `max_body` are answered 413 without being read; connections
// beyond `max_connections` are closed as they are accepted. A handler answers through its
// Responder, on any thread and at any later time (the serving batcher answers from its own
// thread), exactly once; a Responder dropped unanswered answers 500. A Responder holds its
// connection: every one must be answered or dropped before the Server is destroyed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/log.h"

namespace shoal::http {

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string path;    // the target before '?', percent-decoding left to the handler
  std::string query;   // after '?', "" if none
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // as received
  // The first header of that name (case-insensitive), "" if absent.
  std::string header(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra headers
  bool head = false;  // answering HEAD: the headers only (set by the server)
};

// Answers the request it was given to; callable once, from any thread.
class Responder {
 public:
  Responder() = default;
  explicit Responder(std::function<void(Response&&)> send) : state_(std::make_shared<State>(std::move(send))) {}
  void operator()(Response&& response) const;
  bool answered() const;

 private:
  struct State {
    explicit State(std::function<void(Response&&)> s) : send(std::move(s)) {}
    ~State();  // answers 500 if nobody did
    std::function<void(Response&&)> send;
    bool done = false;
  };
  std::shared_ptr<State> state_;
};

using Handler = std::function<void(Request&& request, Responder respond)>;

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;  // 0: any free port (see Server::port())
  int threads = 1;
  std::size_t max_body = 64 * 1024;
  std::size_t max_connections = 10000;
  double request_timeout_s = 10;  // from awaiting a request to having all of it
  double idle_timeout_s = 30;     // a kept-alive connection without a request
  double write_timeout_s = 10;
  std::string what = "HTTP";  // names the server in errors and the log ("metrics.port", "serve.port")
};

class Server {
 public:
  // Listens at once; throws ConfigError naming the address if it cannot. Requests reach
  // `handler` on the serving threads; handlers must not block (hand long work elsewhere).
  Server(ServerOptions options, Handler handler, Logger log);
  ~Server();  // stop() then join
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int port() const;
  // Stops accepting and closes idle connections; a request being handled is still answered.
  // Returns at once; the destructor waits for the threads.
  void stop_accepting();
  std::int64_t open_connections() const;
  // Requests handed to the handler whose answer is not yet written (or failed to be).
  std::int64_t pending_responses() const;

  struct Impl;  // the serving state (server.cc): public so its sessions can reach it

 private:
  std::unique_ptr<Impl> impl_;
};

// The reason phrase of a status code ("Too Many Requests").
std::string_view reason(int status);

}  // namespace shoal::http
