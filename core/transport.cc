#include "core/transport.h"

#include "core/error.h"

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

Socket::Socket(zmq::context_t& context, zmq::socket_type type, Logger log)
    : socket_(context, type), log_(std::move(log)) {
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::maxmsgsize, std::int64_t{1} << 31);  // no frame over 2 GiB
}

void Socket::reject(const std::string& reason, const std::string& detail) {
  std::uint64_t n = ++counters_.dropped[reason];
  if (n <= 5 || n % 1000 == 0)
    SHOAL_LOG(log_, warn, "dropped message (" << reason << ", " << n << " so far): " << detail);
}

std::optional<Incoming> Socket::try_receive() {
  while (true) {
    std::vector<zmq::message_t> frames;
    zmq::message_t frame;
    if (!socket_.recv(frame, zmq::recv_flags::dontwait)) return std::nullopt;
    bool more = frame.more();
    frames.push_back(std::move(frame));
    bool too_many = false;
    while (more) {
      zmq::message_t next;
      (void)socket_.recv(next, zmq::recv_flags::none);  // the rest of a message arrives with it
      more = next.more();
      if (frames.size() > kMaxFrames + 1) {
        too_many = true;  // drain, but keep no more
        continue;
      }
      frames.push_back(std::move(next));
    }
    std::string peer;
    if (has_routing_frame_) {
      peer = frames.front().to_string();
      frames.erase(frames.begin());
    }
    if (too_many) {
      reject("too many frames", "from connection " + std::to_string(peer.size()) + "-byte id");
      continue;
    }
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
    }
  }
}

std::optional<Incoming> Socket::receive(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (auto in = try_receive()) return in;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
    poll_interruptible(&item, 1, left);
  }
}

ServerSocket::ServerSocket(zmq::context_t& context, const std::string& address, Logger log)
    : Socket(context, zmq::socket_type::router, std::move(log)) {
  has_routing_frame_ = true;
  try {
    socket_.bind(zmq_bind_address(address));
  } catch (const zmq::error_t& e) {
    SHOAL_THROW(IoError, "cannot listen on " << address << ": " << e.what());
  }
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
}

void ServerSocket::send(const std::string& peer, Outgoing& message) {
  auto frames = message.frames();
  socket_.send(zmq::buffer(peer), zmq::send_flags::sndmore);
  for (std::size_t i = 0; i < frames.size(); ++i)
    socket_.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
}

ClientSocket::ClientSocket(zmq::context_t& context, const std::string& address, Logger log)
    : Socket(context, zmq::socket_type::dealer, std::move(log)), address_(address) {
  try {
    socket_.connect(address);
  } catch (const zmq::error_t& e) {
    SHOAL_THROW(IoError, "cannot connect to " << address << ": " << e.what());
  }
}

void ClientSocket::send(Outgoing& message) {
  auto frames = message.frames();
  for (std::size_t i = 0; i < frames.size(); ++i)
    socket_.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
}

}  // namespace shoal
