#include "core/transport.h"

#include "core/error.h"
#include "core/tsan.h"

namespace shoal {

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
    : socket_(network.context(), type), log_(std::move(log)), faults_(network.faults()) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::maxmsgsize, std::int64_t{1} << 31);  // no frame over 2 GiB
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

bool Socket::read_frames(std::string& peer, std::vector<zmq::message_t>& frames, bool& too_many) {
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
  return true;
}

std::optional<Incoming> Socket::decode_checked(std::string peer, std::vector<zmq::message_t> frames) {
  try {
    Incoming in = Incoming::decode(std::move(peer), std::move(frames));
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

std::optional<Incoming> Socket::take_due_held() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = held_.begin(); it != held_.end(); ++it) {
    if (it->due > now) continue;
    Incoming in = std::move(it->message);
    held_.erase(it);
    return in;
  }
  return std::nullopt;
}

bool Socket::holds_due_message() const {
  auto now = std::chrono::steady_clock::now();
  for (const auto& h : held_)
    if (h.due <= now) return true;
  return false;
}

std::optional<Incoming> Socket::apply_faults(std::string peer, std::vector<zmq::message_t> frames) {
  std::vector<zmq::message_t> copy;
  for (auto& f : frames) copy.emplace_back(f.data(), f.size());
  auto in = decode_checked(peer, std::move(frames));
  if (!in) return std::nullopt;
  auto rule = faults_->match(in->kind(), in->sender());
  if (!rule) {
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
  switch (rule->action) {
    case FaultAction::drop:
      return std::nullopt;
    case FaultAction::delay:
      held_.push_back(Held{now + rule->delay, false, std::move(*in)});
      return std::nullopt;
    case FaultAction::reorder:  // held until the next message, or `delay` (100 ms if none) at most
      held_.push_back(
          Held{now + (rule->delay.count() > 0 ? rule->delay : std::chrono::milliseconds(100)), true, std::move(*in)});
      return std::nullopt;
    case FaultAction::duplicate: {
      auto twin = Incoming::decode(std::move(peer), std::move(copy));
      held_.push_back(Held{now, false, std::move(twin)});
      return in;
    }
  }
  return in;
}

std::optional<Incoming> Socket::try_receive() {
  if (!held_.empty())
    if (auto in = take_due_held()) return in;
  while (true) {
    std::string peer;
    std::vector<zmq::message_t> frames;
    bool too_many = false;
    if (!read_frames(peer, frames, too_many)) return std::nullopt;
    if (too_many) {
      reject("too many frames", "from connection " + std::to_string(peer.size()) + "-byte id");
      continue;
    }
    auto in = faults_ == nullptr ? decode_checked(std::move(peer), std::move(frames))
                                 : apply_faults(std::move(peer), std::move(frames));
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
  try {
    socket_.bind(zmq_bind_address(address));
  } catch (const zmq::error_t& e) {
    SHOAL_THROW(IoError, "cannot listen on " << address << ": " << e.what());
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
