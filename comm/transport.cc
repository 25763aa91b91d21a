#include "comm/transport.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

#include "base/error.h"
#include "base/tsan.h"
#include "telemetry/telemetry.h"

namespace shoal {

// ZeroMQ's authentication protocol (ZAP, RFC 27): the library asks inproc://zeromq.zap.01 about
// every CURVE handshake on a listening socket of this context; the answer admits the client's
// public key as a member (its name becomes the connection's User-Id) or refuses it.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t& context, const JobKeys& keys, Logger log)
      : socket_(context, zmq::socket_type::rep), keys_(keys), log_(std::move(log)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("inproc://zeromq.zap.01");  // before any listening socket exists
    thread_ = std::thread([this] { run(); });
  }
  ~ZapHandler() {
    stop_ = true;
    thread_.join();
  }

 private:
  void run() {
    while (!stop_.load()) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      poll_interruptible(&item, 1, std::chrono::milliseconds(50));
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      std::vector<zmq::message_t> request;
      while (true) {
        zmq::message_t frame;
        try {
          if (!socket_.recv(frame, zmq::recv_flags::none)) break;
        } catch (const zmq::error_t& e) {
          if (e.num() == EINTR) continue;
          return;  // the context is closing
        }
        const bool more = frame.more();
        request.push_back(std::move(frame));
        if (!more) break;
      }
      answer(request);
    }
  }

  void answer(std::vector<zmq::message_t>& request) {
    // version, request id, domain, address, routing id, mechanism, credentials...
    std::string status = "400", text = "not a member of this job", user;
    const std::string address = request.size() > 3 ? request[3].to_string() : "?";
    if (request.size() >= 7 && request[0].to_string() == "1.0" && request[5].to_string() == "CURVE" &&
        request[6].size() == 32) {
      char z85[41];
      zmq_z85_encode(z85, static_cast<const std::uint8_t*>(request[6].data()), 32);
      auto member = keys_.members.find(z85);
      if (member != keys_.members.end()) {
        status = "200";
        text = "OK";
        user = member->second;
      }
    } else if (request.size() >= 6 && request[5].to_string() != "CURVE") {
      text = "CURVE is required";
    }
    if (status != "200" && (++refused_ <= 5 || refused_ % 1000 == 0))  // counted by the socket's monitor
      SHOAL_LOG(log_, warn, "refused a connection from " << address << ": " << text);
    std::vector<std::string> reply{"1.0", request.size() > 1 ? request[1].to_string() : "", status, text, user, ""};
    for (std::size_t i = 0; i < reply.size(); ++i) {
      zmq::message_t frame(reply[i].data(), reply[i].size());
      try {
        socket_.send(frame, i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      } catch (const zmq::error_t&) {
        return;  // the context is closing
      }
    }
  }

  zmq::socket_t socket_;
  const JobKeys& keys_;
  Logger log_;
  std::uint64_t refused_ = 0;  // this thread's
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

Network::Network(FaultPlan* faults) : context_(1), faults_(faults) {}

Network::~Network() { zap_.reset(); }

void Network::use_curve(JobKeys keys, Logger log, Counter* refused) {
  SHOAL_ASSERT(!keys_, "CURVE keys set twice");
  keys_ = std::make_unique<const JobKeys>(std::move(keys));
  refused_metric_ = refused;
  zap_ = std::make_unique<ZapHandler>(context_, *keys_, std::move(log));
}

void Network::count_refused() {
  ++refused_;
  if (refused_metric_ != nullptr) refused_metric_->add();
}

void use_job_keys(Network& network, const std::string& dir, const std::string& member, const Logger& log,
                  Telemetry* telemetry) {
  Counter* refused = telemetry == nullptr ? nullptr
                                          : &telemetry->metrics.counter("shoal_auth_refused_connections_total",
                                                                        "connections refused: no key of the job");
  network.use_curve(load_job_keys(dir, member), log, refused);
  SHOAL_LOG(log, info, "authenticated as " << member << " (CURVE keys from " << dir << ")");
}

void poll_interruptible(zmq::pollitem_t* items, std::size_t count, std::chrono::milliseconds timeout) {
  try {
    zmq::poll(items, count, timeout);
  } catch (const zmq::error_t& e) {
    if (e.num() != EINTR) throw;
    for (std::size_t i = 0; i < count; ++i) items[i].revents = 0;  // a signal: the caller looks again
  }
}

std::uint64_t ProtocolCounters::total_dropped() const {
  std::uint64_t n = 0;
  for (const auto& [reason, count] : dropped) n += count;
  return n;
}

std::string zmq_bind_address(const std::string& address) {
  if (address.rfind("tcp://", 0) == 0 && address.size() > 2 && address.substr(address.size() - 2) == ":0")
    return address.substr(0, address.size() - 1) + "*";
  return address;
}

Socket::Socket(Network& network, zmq::socket_type type, Logger log)
    : socket_(network.context(), type), log_(std::move(log)), faults_(network.faults()), network_(&network) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::maxmsgsize, std::int64_t{1} << 31);  // no frame over 2 GiB
  if (const JobKeys* keys = network.curve()) {
    if (type == zmq::socket_type::router) {
      SHOAL_REQUIRE(!keys->server.secret_key.empty(), ConfigError,
                    "auth.keys " << keys->directory << " has server.pub but not server.key, so " << keys->member
                                 << " cannot serve (the coordinator's and servers' folders hold server.key; a sync "
                                    "job's rank 0 hosts the coordinator: give sync ranks the whole key folder)");
      socket_.set(zmq::sockopt::curve_server, true);
      socket_.set(zmq::sockopt::curve_secretkey, keys->server.secret_key);
      socket_.set(zmq::sockopt::zap_domain, "shoal");
      authenticated_ = true;
      // Refused handshakes never reach the socket as messages: a monitor reports them.
      static std::atomic<std::uint64_t> monitors{0};
      const std::string endpoint = "inproc://shoal-handshakes-" + std::to_string(++monitors);
      if (zmq_socket_monitor(socket_.handle(), endpoint.c_str(),
                             ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0)
        SHOAL_THROW(InternalError, "zmq_socket_monitor failed: " << zmq_strerror(zmq_errno()));
      monitor_ = std::make_unique<zmq::socket_t>(network.context(), zmq::socket_type::pair);
      monitor_->set(zmq::sockopt::linger, 0);
      monitor_->connect(endpoint);
    } else {
      socket_.set(zmq::sockopt::curve_serverkey, keys->server.public_key);
      socket_.set(zmq::sockopt::curve_publickey, keys->own.public_key);
      socket_.set(zmq::sockopt::curve_secretkey, keys->own.secret_key);
    }
  }
}

Socket::~Socket() {
  if (monitor_) zmq_socket_monitor(socket_.handle(), nullptr, 0);
}

void Socket::drain_handshake_events() {
  while (true) {
    zmq::message_t event, address;
    try {
      if (!monitor_->recv(event, zmq::recv_flags::dontwait)) return;
      if (event.more()) (void)monitor_->recv(address, zmq::recv_flags::none);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return;
    }
    std::uint16_t id = 0;
    if (event.size() >= sizeof id) std::memcpy(&id, event.data(), sizeof id);
    network_->count_refused();
    const char* why = id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH       ? "a key that is not one of the job's members"
                      : id == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ? "no CURVE, or a malformed handshake"
                                                                  : "a failed handshake";
    reject("connection refused (auth.keys)", std::string("a peer with ") + why + " on " + address.to_string());
  }
}

void Socket::reject(const std::string& reason, const std::string& detail) {
  std::uint64_t n = ++counters_.dropped[reason];
  if (n <= 5 || n % 1000 == 0)
    SHOAL_LOG(log_, warn, "dropped message (" << reason << ", " << n << " so far): " << detail);
}

namespace {

// ZeroMQ hands a frame from the sending thread to the receiving one (over inproc://, the very
// same bytes), out of ThreadSanitizer's sight: everything the sender did before sending a frame
// happens before everything the receiver does after receiving it.
void handed_over(zmq::message_t& frame) { tsan_release(frame.data()); }
void taken_over(zmq::message_t& frame) { tsan_acquire(frame.data()); }

// zmq_msg_recv, repeated when a signal interrupts it. False: nothing waiting (dontwait).
bool receive_frame(zmq::socket_t& socket, zmq::message_t& frame, zmq::recv_flags flags) {
  while (true) {
    try {
      return socket.recv(frame, flags).has_value();
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
    }
  }
}

}  // namespace

void Socket::send_frames(std::vector<zmq::message_t>& frames, std::chrono::milliseconds timeout,
                         const std::function<void()>& waiting) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (std::size_t i = 0; i < frames.size(); ++i) {
    auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    while (true) {
      try {
        // Only the first frame can find no room: the rest of a message always follows it.
        handed_over(frames[i]);
        if (socket_.send(frames[i], flags | zmq::send_flags::dontwait)) break;
      } catch (const zmq::error_t& e) {
        // A signal before ZeroMQ took the frame: the frame is still ours, send it again.
        if (e.num() != EINTR) throw;
        continue;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        SHOAL_THROW(TimeoutError,
                    "could not send within " << timeout.count() << " ms: the peer's queue is full or the peer is gone");
      if (waiting && i == 0) waiting();
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLOUT, 0};
      poll_interruptible(&item, 1, std::min(left, std::chrono::milliseconds(100)));
    }
  }
}

bool Socket::read_frames(std::string& peer, std::string& user, std::vector<zmq::message_t>& frames, bool& too_many) {
  zmq::message_t frame;
  if (!receive_frame(socket_, frame, zmq::recv_flags::dontwait)) return false;
  taken_over(frame);
  bool more = frame.more();
  frames.push_back(std::move(frame));
  too_many = false;
  while (more) {
    zmq::message_t next;
    (void)receive_frame(socket_, next, zmq::recv_flags::none);  // the rest of a message arrives with it
    taken_over(next);
    more = next.more();
    if (frames.size() > kMaxFrames + 1) {
      too_many = true;  // drain, but keep no more
      continue;
    }
    frames.push_back(std::move(next));
  }
  if (has_routing_frame_) {
    peer = frames.front().to_string();
    frames.erase(frames.begin());
  }
  if (authenticated_ && !frames.empty()) {
    // Every frame of a CURVE connection carries the User-Id the ZAP handler gave it.
    const char* id = zmq_msg_gets(frames.front().handle(), "User-Id");
    user = id != nullptr ? id : "";
  }
  return true;
}

std::optional<Incoming> Socket::decode_checked(std::string peer, std::vector<zmq::message_t> frames,
                                               const std::string& user) {
  try {
    Incoming in = Incoming::decode(std::move(peer), std::move(frames));
    if (authenticated_) {
      // The envelope's sender is what the peer says; the key is what it proves.
      if (!sender_allowed(user, in.sender())) {
        reject("sender is not its key's member", kind_name(in.kind()) + std::string(" sent as '") + in.sender() +
                                                     "' over a connection with the key of " +
                                                     (user.empty() ? std::string("no member") : user));
        return std::nullopt;
      }
      in.user = user;
    }
    ++counters_.received;
    return in;
  } catch (const ProtocolError& e) {
    std::string what = e.what();
    // The reason is the message up to the first colon, digit or quote, so counts group by kind.
    std::string reason = what.substr(0, what.find_first_of(":0123456789'\""));
    while (!reason.empty() && (reason.back() == ' ' || reason.back() == ':')) reason.pop_back();
    reject(reason.empty() ? what : reason, what);
    return std::nullopt;
  }
}

bool Socket::held_is_due(const Held& h, std::chrono::steady_clock::time_point now) const {
  return h.hold ? faults_->released(*h.hold) : h.due <= now;
}

std::optional<Incoming> Socket::take_due_held() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = held_.begin(); it != held_.end(); ++it) {
    if (!held_is_due(*it, now)) continue;
    Incoming in = std::move(it->message);
    held_.erase(it);
    return in;
  }
  return std::nullopt;
}

bool Socket::holds_due_message() const {
  auto now = std::chrono::steady_clock::now();
  for (const auto& h : held_)
    if (held_is_due(h, now)) return true;
  return false;
}

std::optional<Incoming> Socket::apply_faults(std::string peer, std::vector<zmq::message_t> frames,
                                             const std::string& user) {
  std::vector<zmq::message_t> copy;
  for (auto& f : frames) copy.emplace_back(f.data(), f.size());
  auto in = decode_checked(peer, std::move(frames), user);
  if (!in) return std::nullopt;
  auto matched = faults_->match(in->kind(), in->sender());
  if (!matched) {
    for (auto& h : held_)
      if (h.until_next) {  // a reordered message goes right after this one
        h.until_next = false;
        h.due = std::chrono::steady_clock::now();
      }
    return in;
  }
  ++counters_.injected_faults;
  SHOAL_LOG(log_, debug, "fault injected: " << kind_name(in->kind()) << " from " << in->sender());
  auto now = std::chrono::steady_clock::now();
  const FaultRule* rule = &matched->rule;
  switch (rule->action) {
    case FaultAction::drop:
      return std::nullopt;
    case FaultAction::delay:
      held_.push_back(Held{now + rule->delay, false, std::move(*in), std::nullopt});
      return std::nullopt;
    case FaultAction::reorder:  // held until the next message, or `delay` (100 ms if none) at most
      held_.push_back(Held{now + (rule->delay.count() > 0 ? rule->delay : std::chrono::milliseconds(100)), true,
                           std::move(*in), std::nullopt});
      return std::nullopt;
    case FaultAction::duplicate: {
      auto twin = Incoming::decode(std::move(peer), std::move(copy));
      twin.user = in->user;
      held_.push_back(Held{now, false, std::move(twin), std::nullopt});
      return in;
    }
    case FaultAction::hold:
      held_.push_back(Held{now, false, std::move(*in), matched->index});
      return std::nullopt;
  }
  return in;
}

std::optional<Incoming> Socket::try_receive() {
  if (monitor_) drain_handshake_events();
  if (!held_.empty())
    if (auto in = take_due_held()) return in;
  while (true) {
    std::string peer, user;
    std::vector<zmq::message_t> frames;
    bool too_many = false;
    if (!read_frames(peer, user, frames, too_many)) return std::nullopt;
    if (too_many) {
      reject("too many frames", "from connection " + std::to_string(peer.size()) + "-byte id");
      continue;
    }
    auto in = faults_ == nullptr ? decode_checked(std::move(peer), std::move(frames), user)
                                 : apply_faults(std::move(peer), std::move(frames), user);
    if (in) return in;
    if (!held_.empty())
      if (auto due = take_due_held()) return due;
  }
}

std::optional<Incoming> Socket::receive(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (auto in = try_receive()) return in;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    // A message held back by a fault rule becomes due without any socket event.
    if (!held_.empty()) left = std::min(left, std::chrono::milliseconds(5));
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    poll_interruptible(&item, 1, left);
  }
}

ServerSocket::ServerSocket(Network& network, const std::string& address, Logger log)
    : Socket(network, zmq::socket_type::router, std::move(log)) {
  has_routing_frame_ = true;
  // A process started again at once (a restarted coordinator) may find its address still held
  // for a moment: ZeroMQ closes a socket's listener in its I/O thread, after the socket is gone.
  for (int attempt = 0;; ++attempt) {
    try {
      socket_.bind(zmq_bind_address(address));
      break;
    } catch (const zmq::error_t& e) {
      if (e.num() == EADDRINUSE && attempt < 40) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      SHOAL_THROW(IoError, "cannot listen on " << address << ": " << e.what());
    }
  }
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
}

void ServerSocket::send(const std::string& peer, Outgoing& message) {
  auto body = message.frames();
  std::vector<zmq::message_t> frames;
  frames.reserve(body.size() + 1);
  frames.emplace_back(peer.data(), peer.size());
  for (auto& f : body) frames.push_back(std::move(f));
  send_frames(frames, kSendTimeout);  // a ROUTER never waits: it drops what it cannot route
}

ClientSocket::ClientSocket(Network& network, const std::string& address, Logger log)
    : Socket(network, zmq::socket_type::dealer, std::move(log)), address_(address) {
  try {
    socket_.connect(address);
  } catch (const zmq::error_t& e) {
    SHOAL_THROW(IoError, "cannot connect to " << address << ": " << e.what());
  }
}

void ClientSocket::send(Outgoing& message, std::chrono::milliseconds timeout, const std::function<void()>& waiting) {
  auto frames = message.frames();
  send_frames(frames, timeout, waiting);
}

}  // namespace shoal
