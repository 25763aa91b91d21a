#include "ps/client/ps_client.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "base/error.h"

namespace shoal {

PsClient::PsClient(Network& network, const PartitionTable& table, std::string worker_id, Logger log,
                   PsClientOptions options, PullTarget pull_target)
    : table_(table),
      id_(std::move(worker_id)),
      log_(std::move(log)),
      options_(std::move(options)),
      pull_target_(std::move(pull_target)) {
  connect(network);
  clock_ = table.start_clock;  // a worker joining a running job starts at the slowest live clock
}

void PsClient::connect(Network& network) {
  links_.clear();
  owner_.assign(table_.chunks.size(), 0);
  for (std::size_t s = 0; s < table_.servers.size(); ++s) {
    Link link;
    link.id = table_.servers[s].id;
    link.address = table_.servers[s].address;
    link.socket = std::make_unique<ClientSocket>(network, link.address, log_);
    if (MetricsRegistry* m = options_.metrics) {
      const Labels server{{"server", link.id}};
      link.push_bytes = &m->counter("shoal_worker_push_bytes_total", "gradient bytes pushed, per server", server);
      link.pull_bytes = &m->counter("shoal_worker_pull_bytes_total", "parameter bytes pulled, per server", server);
      link.push_seconds = &m->histogram("shoal_worker_push_seconds",
                                        "push round trips, per server: sent until acknowledged (a push that asks "
                                        "for its chunks back: until they arrived)",
                                        latency_buckets(), server);
      link.pull_seconds = &m->histogram("shoal_worker_pull_seconds",
                                        "pull round trips, per server: sent until every chunk arrived "
                                        "(includes waiting for the staleness bound)",
                                        latency_buckets(), server);
    }
    for (std::uint32_t k = table_.servers[s].first_key; k < table_.servers[s].end_key; ++k) {
      link.keys.push_back(k);
      owner_[k] = s;
    }
    links_.push_back(std::move(link));
  }
}

void PsClient::retarget(Network& network, const PartitionTable& table) {
  SHOAL_REQUIRE(table.total_elements == table_.total_elements, ProtocolError,
                "the new partition table covers " << table.total_elements << " values, not " << table_.total_elements);
  table_ = table;
  connect(network);
}

void PsClient::send_pull(Link& link, bool bounded) {
  std::uint64_t id = next_request_++;
  Outgoing msg(id_, id);
  auto pull = msg.body().initPull();
  pull.setClock(clock_);
  pull.setBounded(bounded);
  link.socket->send(msg, send_timeout(), options_.watch);
  link.pull_id = id;
  link.pull_sent = std::chrono::steady_clock::now();
  link.pull_bounded = bounded;
  link.pulled.clear();
}

void PsClient::Link::push_answered(std::uint64_t request_id) {
  auto sent = push_sent.find(request_id);
  if (sent == push_sent.end()) return;
  if (push_seconds != nullptr)
    push_seconds->observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - sent->second).count());
  push_sent.erase(sent);
}

void PsClient::handle_reply(Link& link, Incoming& in) {
  using K = wire::Envelope::Body;
  switch (in.kind()) {
    case K::PUSH_ACK:
      if (link.in_flight > 0) --link.in_flight;
      link.push_answered(in.request_id());
      return;
    case K::PULL_REPLY: {
      auto owed = link.push_pulls.find(in.request_id());
      bool pull = link.pull_id && in.request_id() == *link.pull_id;
      if (!pull && owed == link.push_pulls.end()) return;  // a reply to an abandoned pull
      auto chunks = in.envelope().getBody().getPullReply().getChunks();
      float* values = pull_target_();
      for (unsigned i = 0; i < chunks.size(); ++i) {
        std::uint32_t key = chunks[i].getKey();
        SHOAL_REQUIRE(key < owner_.size() && owner_[key] == static_cast<std::size_t>(&link - links_.data()) &&
                          chunks[i].getNumel() == table_.chunks[key].numel,
                      ProtocolError,
                      link.id << " sent chunk key " << key << " that does not match the partition table");
        SHOAL_REQUIRE(link.pulled.insert(key).second, ProtocolError, link.id << " sent chunk key " << key << " twice");
        std::memcpy(values + table_.chunks[key].offset, in.payloads()[i].data(), in.payloads()[i].size());
        if (link.pull_bytes != nullptr) link.pull_bytes->add(static_cast<double>(in.payloads()[i].size()));
      }
      if (pull && link.pulled.size() == link.keys.size()) {  // replies come in parts
        link.pull_id.reset();
        if (link.pull_seconds != nullptr)
          link.pull_seconds->observe(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - link.pull_sent).count());
      }
      if (!pull) {
        SHOAL_REQUIRE(chunks.size() <= owed->second, ProtocolError,
                      link.id << " answered a push with more chunks than it carried");
        if ((owed->second -= chunks.size()) == 0) {
          link.push_pulls.erase(owed);
          link.push_answered(in.request_id());
        }
      }
      return;
    }
    case K::ERROR: {
      auto err = in.envelope().getBody().getError();
      bool pull = link.pull_id && in.request_id() == *link.pull_id;
      if (pull && (err.getCode() == wire::ErrorCode::NOT_READY || err.getCode() == wire::ErrorCode::UNKNOWN_SENDER)) {
        // The server has not yet heard from the coordinator that we exist: ask again shortly.
        link.pull_id.reset();
        link.pulled.clear();
        link.retry_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
        return;
      }
      if (err.getCode() == wire::ErrorCode::TIMEOUT)
        SHOAL_THROW(TimeoutError, link.id << ": " << err.getMessage().cStr());
      if (err.getCode() == wire::ErrorCode::UNKNOWN_SENDER)  // the coordinator declared us dead
        throw DetachedError(id_ + " was dropped from the job: " + link.id + " says: " + err.getMessage().cStr(),
                            ExitCode::timeout);
      SHOAL_THROW(ProtocolError, link.id << " refused a request: " << err.getMessage().cStr());
    }
    default:
      link.socket->reject("unexpected message kind", kind_name(in.kind()) + std::string(" from ") + link.id);
  }
}

template <typename Done>
void PsClient::pump_until(Done done, const char* waiting_for, const std::function<void()>& interrupt) {
  auto started = std::chrono::steady_clock::now();
  auto deadline = started + std::chrono::duration_cast<std::chrono::milliseconds>(options_.request_timeout);
  std::vector<zmq::pollitem_t> items;
  for (auto& link : links_) items.push_back(zmq::pollitem_t{link.socket->raw().handle(), 0, ZMQ_POLLIN, 0});
  while (!done()) {
    if (interrupt) interrupt();
    if (options_.watch) options_.watch();
    auto now = std::chrono::steady_clock::now();
    // Pulls refused during start-up are sent again, within the start-up allowance.
    for (auto& link : links_) {
      if (!link.pull_id && link.retry_at != std::chrono::steady_clock::time_point{} && now >= link.retry_at) {
        link.retry_at = {};
        send_pull(link, link.pull_bounded);
        deadline = std::max(
            deadline,
            std::min(now + std::chrono::milliseconds(1000),
                     started + std::chrono::duration_cast<std::chrono::milliseconds>(options_.startup_timeout)));
      }
    }
    if (now > deadline) {
      std::string who;
      for (const auto& link : links_) {
        std::string owes;
        if (link.in_flight > 0) owes = "push acknowledgements: " + std::to_string(link.in_flight);
        if (link.pull_id) owes += std::string(owes.empty() ? "" : ", ") + "the pull";
        if (!link.push_pulls.empty())
          owes += std::string(owes.empty() ? "" : ", ") + "replies to " + std::to_string(link.push_pulls.size()) +
                  " pushes";
        if (!owes.empty()) who += " " + link.id + " (" + link.address + "; " + owes + ")";
      }
      SHOAL_THROW(TimeoutError, "no answer for " << waiting_for << " within " << options_.request_timeout.count()
                                                 << " s from:" << (who.empty() ? std::string(" ?") : who));
    }
    poll_interruptible(items.data(), items.size(), std::chrono::milliseconds(10));
    for (std::size_t i = 0; i < links_.size(); ++i) {
      if (!(items[i].revents & ZMQ_POLLIN) && !links_[i].socket->holds_due_message()) continue;
      while (auto in = links_[i].socket->try_receive()) handle_reply(links_[i], *in);
    }
  }
}

void PsClient::await_parameters(const std::function<void()>& interrupt) {
  // A pull for every server that was not asked with this clock's pushes (the first step, an
  // idle one) and has not sent everything already.
  for (auto& link : links_)
    if (!link.pull_id && link.push_pulls.empty() && link.pulled.size() < link.keys.size() &&
        link.retry_at == std::chrono::steady_clock::time_point{})
      send_pull(link, true);
  pump_until(
      [&] {
        for (const auto& link : links_)
          if (link.pull_id || !link.push_pulls.empty() || link.retry_at != std::chrono::steady_clock::time_point{} ||
              link.in_flight > 0)
            return false;
        return true;
      },
      "the parameters", interrupt);
  for (auto& link : links_) link.pulled.clear();
}

void PsClient::send_push(std::size_t server, const std::vector<std::uint32_t>& keys, const PushSource& source) {
  Link& link = links_[server];
  pump_until([&] { return link.in_flight + static_cast<int>(link.push_pulls.size()) < options_.max_in_flight; },
             "a push acknowledgement");
  const std::uint64_t id = next_request_++;
  Outgoing msg(id_, id);
  auto p = msg.body().initPush();
  p.setClock(clock_);
  p.setPullAfter(true);
  auto list = p.initChunks(static_cast<unsigned>(keys.size()));
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const ChunkSpan& c = table_.chunks[keys[i]];
    list[static_cast<unsigned>(i)].setKey(keys[i]);
    list[static_cast<unsigned>(i)].setNumel(static_cast<std::uint32_t>(c.numel));
    msg.add_borrowed_payload(source.values + c.offset, static_cast<std::size_t>(c.numel) * sizeof(float), source.owner);
  }
  link.socket->send(msg, send_timeout(), options_.watch);
  if (link.push_bytes != nullptr) {
    std::size_t bytes = 0;
    for (std::uint32_t k : keys) bytes += static_cast<std::size_t>(table_.chunks[k].numel) * sizeof(float);
    link.push_bytes->add(static_cast<double>(bytes));
    link.push_sent[id] = std::chrono::steady_clock::now();
  }
  link.push_pulls[id] = keys.size();  // answered with these chunks' values for the next clock, once applied
}

void PsClient::push(std::size_t server, const std::vector<std::uint32_t>& keys, const PushSource& source) {
  // A large chunk goes alone, so a server applies chunk k while chunk k + 1 is on the wire;
  // small ones share a message, so a small model costs one message, not one per chunk.
  // Every push asks for its chunks back (pullAfter): the server answers with their values for the
  // next step as soon as it has applied them, so the pull of the layers backward finished
  // first overlaps the pushes of the rest, and one message each way replaces push, ack, pull.
  // Backward finishes a server's keys from the highest down, so the call that holds its first
  // key is its last of the step: then every chunk was asked for and no pull is needed.
  if (!keys.empty() && keys.front() == links_[server].keys.front()) links_[server].asked = true;
  std::vector<std::uint32_t> group;
  std::int64_t bytes = 0;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    group.push_back(keys[i]);
    bytes += table_.chunks[keys[i]].numel * static_cast<std::int64_t>(sizeof(float));
    bool end = i + 1 == keys.size();
    if (end || bytes + table_.chunks[keys[i + 1]].numel * static_cast<std::int64_t>(sizeof(float)) > kCoalesceBytes) {
      send_push(server, group, source);
      group.clear();
      bytes = 0;
    }
  }
}

void PsClient::advance_clock() {
  // Every chunk pushed at this clock was asked back with its push. A server that got no push
  // (an idle step) is asked now, without waiting for acknowledgements: a server answers a
  // connection's messages in order, so the reply carries this clock's updates.
  ++clock_;
  if (options_.on_clock) options_.on_clock(clock_);
  for (auto& link : links_) {
    if (!link.asked) send_pull(link, true);  // not asked for with the last push
    link.asked = false;
  }
}

void PsClient::push_idle() {
  for (auto& link : links_) {
    Outgoing msg(id_, next_request_++);
    msg.body().initPush().setClock(clock_);
    link.socket->send(msg, send_timeout(), options_.watch);
    ++link.in_flight;
  }
}

void PsClient::leave() {
  for (auto& link : links_) {
    Outgoing msg(id_, next_request_++);
    msg.body().setLeave();
    try {
      link.socket->send(msg, std::chrono::milliseconds(100));
    } catch (const TimeoutError&) {
      SHOAL_LOG(log_, warn, "could not tell " << link.id << " that " << id_ << " leaves");
    }
  }
  // Best effort: the servers also learn it from the coordinator.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  std::size_t acked = 0;
  while (acked < links_.size() && std::chrono::steady_clock::now() < deadline) {
    for (auto& link : links_)
      while (auto in = link.socket->try_receive())
        if (in->kind() == wire::Envelope::Body::ACK) ++acked;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace shoal
