#include "core/control_client.h"

#include <unistd.h>

#include "core/error.h"

namespace shoal {

namespace {
std::chrono::milliseconds to_ms(Seconds s) { return std::chrono::duration_cast<std::chrono::milliseconds>(s); }
}  // namespace

ControlClient::ControlClient(zmq::context_t& context, const std::string& coordinator, std::string sender, Logger log,
                             Seconds request_timeout)
    : socket_(context, coordinator, log), sender_(std::move(sender)), log_(std::move(log)), timeout_(request_timeout) {}

Outgoing ControlClient::make(std::uint64_t* request_id) {
  std::uint64_t id = next_request_++;
  if (request_id != nullptr) *request_id = id;
  return Outgoing(sender_, id);
}

Incoming ControlClient::request(Outgoing& message, Seconds timeout) {
  std::uint64_t id = message.envelope().getRequestId();
  auto kind = message.envelope().getBody().which();
  socket_.send(message);
  auto deadline = std::chrono::steady_clock::now() + to_ms(timeout);
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) left = std::chrono::milliseconds(0);
    auto reply = socket_.receive(left);
    if (!reply) {
      SHOAL_THROW(TimeoutError, "no reply from the coordinator at " << socket_.address() << " to " << kind_name(kind)
                                                                    << " within " << timeout.count() << " s");
    }
    if (reply->request_id() == id) return std::move(*reply);
  }
}

std::string ControlClient::register_node(wire::Role role, int rank, const std::string& address, Seconds deadline) {
  auto give_up = std::chrono::steady_clock::now() + to_ms(deadline);
  while (true) {
    Outgoing msg = make();
    auto reg = msg.body().initRegister();
    reg.setRole(role);
    reg.setRank(rank);
    reg.setAddress(address);
    reg.setDevice("cpu");
    Seconds wait = std::min<Seconds>(timeout_, Seconds(2.0));
    try {
      Incoming reply = request(msg, wait);
      if (reply.kind() == wire::Envelope::Body::REGISTER_REPLY) {
        sender_ = reply.envelope().getBody().getRegisterReply().getId().cStr();
        return sender_;
      }
      if (reply.kind() == wire::Envelope::Body::ERROR) {
        auto err = reply.envelope().getBody().getError();
        if (err.getCode() != wire::ErrorCode::NOT_READY)
          SHOAL_THROW(ProtocolError, "the coordinator refused registration: " << err.getMessage().cStr());
      }
    } catch (const TimeoutError&) {
      // The coordinator may not be up yet; the request stays queued in ZeroMQ, ask again.
    }
    SHOAL_REQUIRE(std::chrono::steady_clock::now() < give_up, TimeoutError,
                  "could not register with the coordinator at " << socket_.address() << " within " << deadline.count()
                                                                << " s (cluster.startup_timeout_seconds)");
  }
}

PartitionTable ControlClient::fetch_table(Seconds deadline) {
  auto give_up = std::chrono::steady_clock::now() + to_ms(deadline);
  while (true) {
    Outgoing msg = make();
    msg.body().setTableRequest();
    Incoming reply = request(msg, timeout_);
    if (reply.kind() == wire::Envelope::Body::PARTITION_TABLE)
      return PartitionTable::from_wire(reply.envelope().getBody().getPartitionTable());
    if (reply.kind() == wire::Envelope::Body::ERROR) {
      auto err = reply.envelope().getBody().getError();
      if (err.getCode() != wire::ErrorCode::NOT_READY)
        SHOAL_THROW(ProtocolError, "the coordinator refused the partition table: " << err.getMessage().cStr());
    }
    SHOAL_REQUIRE(std::chrono::steady_clock::now() < give_up, TimeoutError,
                  "the coordinator did not publish the partition table within "
                      << deadline.count() << " s: are all servers and workers up?");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

LeaseTask ControlClient::request_lease() {
  Outgoing msg = make();
  msg.body().setLeaseRequest();
  Incoming reply = request(msg, timeout_);
  LeaseTask task;
  if (reply.kind() == wire::Envelope::Body::ERROR) {
    auto err = reply.envelope().getBody().getError();
    if (err.getCode() == wire::ErrorCode::SHUTTING_DOWN) {
      task.kind = LeaseTask::finished;
      return task;
    }
    SHOAL_THROW(ProtocolError, "lease refused: " << err.getMessage().cStr());
  }
  SHOAL_REQUIRE(reply.kind() == wire::Envelope::Body::LEASE_GRANT, ProtocolError,
                "expected a lease grant, got " << kind_name(reply.kind()));
  auto grant = reply.envelope().getBody().getLeaseGrant();
  switch (grant.which()) {
    case wire::LeaseGrant::SHARD: {
      auto s = grant.getShard();
      task.kind = LeaseTask::shard;
      task.epoch = s.getEpoch();
      task.index = s.getIndex();
      task.begin = static_cast<std::int64_t>(s.getBegin());
      task.end = static_cast<std::int64_t>(s.getEnd());
      SHOAL_REQUIRE(task.begin < task.end, ProtocolError, "empty shard granted");
      break;
    }
    case wire::LeaseGrant::EVALUATE:
      task.kind = LeaseTask::evaluate;
      task.epoch = grant.getEvaluate();
      break;
    case wire::LeaseGrant::WAIT:
      task.kind = LeaseTask::wait;
      task.wait_ms = grant.getWait();
      break;
    case wire::LeaseGrant::FINISHED:
      task.kind = LeaseTask::finished;
      break;
    default:
      SHOAL_THROW(ProtocolError, "unknown lease grant kind");
  }
  return task;
}

void ControlClient::report_shard(std::int64_t epoch, std::int64_t index, std::int64_t samples, double loss_sum,
                                 std::int64_t correct, double seconds) {
  Outgoing msg = make();
  auto d = msg.body().initLeaseDone();
  d.setEpoch(static_cast<std::uint32_t>(epoch));
  d.setIndex(static_cast<std::uint32_t>(index));
  d.setSamples(static_cast<std::uint64_t>(samples));
  d.setLossSum(loss_sum);
  d.setCorrect(static_cast<std::uint64_t>(correct));
  d.setSeconds(seconds);
  request(msg, timeout_);
}

void ControlClient::report_evaluation(std::int64_t epoch, double loss, double accuracy, std::int64_t samples) {
  Outgoing msg = make();
  auto d = msg.body().initEvalDone();
  d.setEpoch(static_cast<std::uint32_t>(epoch));
  d.setLoss(loss);
  d.setAccuracy(accuracy);
  d.setSamples(static_cast<std::uint64_t>(samples));
  request(msg, timeout_);
}

void ControlClient::leave() {
  Outgoing msg = make();
  msg.body().setLeave();
  request(msg, timeout_);
}

Heartbeat::Heartbeat(zmq::context_t& context, const std::string& coordinator, const std::string& sender, Logger log,
                     Seconds interval, Seconds dead_after)
    : context_(context), log_(std::move(log)) {
  thread_ = std::thread(&Heartbeat::loop, this, coordinator, sender, interval, dead_after);
}

Heartbeat::~Heartbeat() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> Heartbeat::live_workers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_workers_;
}

std::string Heartbeat::shutdown_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return reason_;
}

void Heartbeat::loop(std::string coordinator, std::string sender, Seconds interval, Seconds dead_after) {
  ControlClient client(context_, coordinator, sender, log_, interval);
  auto last_ok = std::chrono::steady_clock::now();
  while (!stop_ && !shutdown_) {
    auto started = std::chrono::steady_clock::now();
    try {
      Outgoing msg = client.make();
      auto hb = msg.body().initHeartbeat();
      hb.setGeneration(generation_);
      hb.setClock(clock_);
      // Wait for the reply no longer than the interval, so a slow coordinator cannot stall us.
      Incoming reply = client.request(msg, std::max(interval, Seconds(0.05)));
      if (reply.kind() == wire::Envelope::Body::HEARTBEAT_REPLY) {
        auto r = reply.envelope().getBody().getHeartbeatReply();
        {
          std::lock_guard<std::mutex> lock(mutex_);
          live_workers_.clear();
          for (auto w : r.getLiveWorkers()) live_workers_.emplace_back(w.cStr());
          if (r.getShutdown()) reason_ = "the job is over";
        }
        generation_ = r.getGeneration();
        if (r.getShutdown()) shutdown_ = true;
        last_ok = std::chrono::steady_clock::now();
      } else if (reply.kind() == wire::Envelope::Body::ERROR) {
        std::lock_guard<std::mutex> lock(mutex_);
        reason_ = std::string("the coordinator says: ") + reply.envelope().getBody().getError().getMessage().cStr();
        shutdown_ = true;
      }
    } catch (const TimeoutError&) {
    } catch (const Error& e) {
      SHOAL_LOG(log_, warn, "heartbeat failed: " << e.what());
    }
    if (std::chrono::steady_clock::now() - last_ok > dead_after) {
      if (!lost_) SHOAL_LOG(log_, error, "no heartbeat reply from the coordinator for " << dead_after.count() << " s");
      lost_ = true;
    }
    auto next = started + to_ms(interval);
    while (!stop_ && std::chrono::steady_clock::now() < next)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace shoal
