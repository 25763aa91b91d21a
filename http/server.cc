#include "http/server.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <mutex>
#include <optional>
#include <strings.h>
#include <thread>

#include "base/error.h"

namespace shoal::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

std::string Request::header(std::string_view name) const {
  for (const auto& [k, v] : headers)
    if (k.size() == name.size() && strncasecmp(k.data(), name.data(), k.size()) == 0) return v;
  return {};
}

void Responder::operator()(Response&& response) const {
  if (!state_ || state_->done) return;
  state_->done = true;
  state_->send(std::move(response));
}

bool Responder::answered() const { return !state_ || state_->done; }

Responder::State::~State() {
  if (done || !send) return;
  Response r;
  r.status = 500;
  r.body = "internal error: the request was dropped unanswered\n";
  send(std::move(r));
}

std::string_view reason(int status) {
  const auto s = bhttp::obsolete_reason(bhttp::int_to_status(static_cast<unsigned>(status)));
  return {s.data(), s.size()};
}

namespace {

std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

// A thousand idle clients need a thousand descriptors: raise the soft limit to the hard one (once).
void raise_descriptor_limit() {
  static std::once_flag once;
  std::call_once(once, [] {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
      lim.rlim_cur = lim.rlim_max;
      setrlimit(RLIMIT_NOFILE, &lim);
    }
  });
}

// Whether responders may still post to the serving threads: closed (under the mutex) before the
// io_context goes away, so a late answer from another thread is dropped instead of touching it.
struct Gate {
  std::mutex mu;
  bool open = true;
};

}  // namespace

struct Server::Impl {
  // Declared before the io_context: its destructor destroys the sessions still queued on it,
  // and they count themselves out of `connections`.
  ServerOptions options;
  Handler handler;
  Logger log;
  std::atomic<std::int64_t> connections{0}, pending{0};
  std::shared_ptr<Gate> gate = std::make_shared<Gate>();
  int port = 0;
  net::io_context ioc;
  tcp::acceptor acceptor;
  std::vector<std::thread> threads;

  Impl(ServerOptions o, Handler h, Logger l)
      : options(std::move(o)), handler(std::move(h)), log(std::move(l)), ioc(std::max(1, options.threads)),
        acceptor(net::make_strand(ioc)) {}

  void accept();
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, Server::Impl& server) : stream_(std::move(socket)), server_(server) {
    ++server_.connections;
  }
  ~Session() { --server_.connections; }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read(); });
  }

 private:
  void read() {
    parser_.emplace();
    parser_->body_limit(server_.options.max_body);
    parser_->header_limit(16 * 1024);
    stream_.expires_after(seconds(first_ ? server_.options.request_timeout_s : server_.options.idle_timeout_s));
    first_ = false;
    // The header first: a client that sent `Expect: 100-continue` (curl does for bodies over
    // 1 KiB) waits for a 100 before it sends the body.
    bhttp::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec || self->parser_->is_done()) return self->on_read(ec);
      if (const auto length = self->parser_->content_length(); length && *length > self->server_.options.max_body)
        return self->on_read(bhttp::error::body_limit);  // refused before a byte of it is read
      // Room for the body: Beast reads at most the buffer's spare capacity (512 bytes when it has
      // none), so a 16 KB body took 32 reads. Up to 1 MiB at a time.
      if (const auto length = self->parser_->content_length(); length && *length > 512)
        self->buffer_.reserve(self->buffer_.size() + static_cast<std::size_t>(std::min<std::uint64_t>(*length, 1 << 20)));
      const auto expect = self->parser_->get()[bhttp::field::expect];
      if (beast::iequals(expect, "100-continue")) {
        if (self->parser_->content_length() && *self->parser_->content_length() > self->server_.options.max_body)
          return self->on_read(bhttp::error::body_limit);
        self->continue_ = std::make_unique<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, 11);
        return bhttp::async_write(self->stream_, *self->continue_, [self](beast::error_code ec2, std::size_t) {
          if (ec2) return self->close();
          self->read_body();
        });
      }
      self->read_body();
    });
  }

  void read_body() {
    bhttp::async_read(stream_, buffer_, *parser_,
                      [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == bhttp::error::body_limit) {
      Response r;
      r.status = 413;
      r.content_type = "application/json";
      r.body = "{\"error\": \"the request body is over the limit of " + std::to_string(server_.options.max_body) +
               " bytes\"}";
      keep_alive_ = false;
      linger_ = true;
      write(std::move(r));
      return;
    }
    if (ec == bhttp::error::end_of_stream || ec == beast::error::timeout || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted) {
      close();
      return;
    }
    if (ec) {
      Response r;
      r.status = 400;
      r.body = "bad request: " + ec.message() + "\n";
      keep_alive_ = false;
      linger_ = true;
      write(std::move(r));
      return;
    }
    auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    version_ = req.version();
    Request request;
    request.method = std::string(req.method_string());
    const std::string_view target(req.target().data(), req.target().size());
    const auto q = target.find('?');
    request.path = std::string(target.substr(0, q));
    if (q != std::string_view::npos) request.query = std::string(target.substr(q + 1));
    for (const auto& field : req)
      request.headers.emplace_back(std::string(field.name_string()), std::string(field.value()));
    request.body = std::move(req.body());
    head_ = request.method == "HEAD";
    // The answer comes back on this connection's strand, whichever thread gives it; the pending
    // answer holds the connection open.
    std::shared_ptr<Gate> gate = server_.gate;
    Responder respond([self = shared_from_this(), gate](Response&& r) {
      std::lock_guard lock(gate->mu);
      if (!gate->open) return;
      net::post(self->stream_.get_executor(), [self, r = std::move(r)]() mutable { self->write(std::move(r)); });
    });
    ++server_.pending;
    pending_ = true;
    try {
      server_.handler(std::move(request), respond);
    } catch (const std::exception& e) {
      SHOAL_LOG(server_.log, warn, server_.options.what << ": a handler failed: " << e.what());
      Response r;
      r.status = 500;
      r.body = "internal error\n";
      respond(std::move(r));
    }
  }

  void write(Response&& r) {
    res_ = {};
    res_.version(version_);
    res_.result(static_cast<unsigned>(r.status));
    res_.set(bhttp::field::server, "shoal");
    res_.set(bhttp::field::content_type, r.content_type);
    for (auto& [k, v] : r.headers) res_.set(k, v);
    res_.keep_alive(keep_alive_);
    if (head_) {
      res_.content_length(r.body.size());
    } else {
      res_.body() = std::move(r.body);
      res_.prepare_payload();
    }
    stream_.expires_after(seconds(server_.options.write_timeout_s));
    bhttp::async_write(stream_, res_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (self->pending_) {
        self->pending_ = false;
        --self->server_.pending;
      }
      if (!ec && self->linger_) return self->linger();
      if (ec || !self->keep_alive_) {
        self->close();
        return;
      }
      self->read();
    });
  }

  // After an error answer to a client that may still be sending (a body over the limit): stop
  // sending, then read and drop what still comes for up to two seconds, so the client reads the
  // answer instead of a reset (a close with unread data sends RST).
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.expires_after(std::chrono::seconds(2));
    drain_.resize(16 * 1024);
    drain();
  }
  void drain() {
    stream_.async_read_some(net::buffer(drain_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      self->drain();
    });
  }

  void close() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  beast::tcp_stream stream_;
  Server::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  bhttp::response<bhttp::string_body> res_;
  std::unique_ptr<bhttp::response<bhttp::empty_body>> continue_;  // a 100 Continue being written
  unsigned version_ = 11;
  bool keep_alive_ = false, head_ = false, first_ = true;
  bool pending_ = false;  // a request handed to the handler, its answer not yet written
  bool linger_ = false;   // close after the answer by draining what the client still sends
  std::vector<char> drain_;
};

}  // namespace

void Server::Impl::accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
    if (!ec) {
      if (static_cast<std::size_t>(connections.load()) >= options.max_connections) {
        beast::error_code ignored;
        socket.close(ignored);  // over the limit: refused as it arrives, never queued
      } else {
        std::make_shared<Session>(std::move(socket), *this)->start();
      }
    } else if (ec == net::error::no_descriptors) {
      SHOAL_LOG(log, warn, options.what << ": out of file descriptors, " << connections.load() << " connections open");
    }
    accept();
  });
}

Server::Server(ServerOptions options, Handler handler, Logger log)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler), std::move(log))) {
  raise_descriptor_limit();
  Impl& s = *impl_;
  beast::error_code ec;
  const auto address = net::ip::make_address(s.options.host, ec);
  SHOAL_REQUIRE(!ec, ConfigError, s.options.what << ": '" << s.options.host << "' is not an IP address");
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(s.options.port));
  s.acceptor.open(endpoint.protocol(), ec);
  if (!ec) s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) s.acceptor.bind(endpoint, ec);
  if (!ec) s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  SHOAL_REQUIRE(!ec, ConfigError,
                s.options.what << " " << s.options.port << ": cannot listen on " << s.options.host << ":"
                               << s.options.port << ": " << ec.message());
  s.port = s.acceptor.local_endpoint().port();
  s.accept();
  for (int i = 0; i < std::max(1, s.options.threads); ++i) s.threads.emplace_back([&s] { s.ioc.run(); });
}

Server::~Server() {
  {
    std::lock_guard lock(impl_->gate->mu);
    impl_->gate->open = false;
  }
  impl_->ioc.stop();
  for (auto& t : impl_->threads) t.join();
}

int Server::port() const { return impl_->port; }

void Server::stop_accepting() {
  net::post(impl_->acceptor.get_executor(), [this] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
  });
}

std::int64_t Server::open_connections() const { return impl_->connections.load(); }

std::int64_t Server::pending_responses() const { return impl_->pending.load(); }

}  // namespace shoal::http
