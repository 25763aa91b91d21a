#include "coordinator/client/control_client.h"

#include <unistd.h>

#include <random>
#include <sstream>

#include "base/error.h"

namespace shoal {

namespace {
std::chrono::milliseconds to_ms(Seconds s) { return std::chrono::duration_cast<std::chrono::milliseconds>(s); }

bool stopped(const std::atomic<bool>* stop) { return stop != nullptr && stop->load(); }

std::uint64_t draw_nonce() {
  std::random_device device;
  return (std::uint64_t{device()} << 32) ^ device() ^ static_cast<std::uint64_t>(getpid());
}

// The coordinator no longer counts this process (it was declared dead while unreachable):
// the same TimeoutError whichever request notices it first.
void throw_if_dropped(const Incoming& reply, const std::string& self) {
  if (reply.kind() != wire::Envelope::Body::ERROR) return;
  auto err = reply.envelope().getBody().getError();
  if (err.getCode() == wire::ErrorCode::COORDINATOR_RESTARTED)
    throw CoordinatorRestarted(
        self + ": the coordinator was restarted and does not know this process yet: " + err.getMessage().cStr());
  if (err.getCode() == wire::ErrorCode::UNKNOWN_SENDER)
    throw DetachedError(self + " was dropped from the job: the coordinator says: " + err.getMessage().cStr(),
                        ExitCode::timeout);
}

// An error reply: "shutting down" carries how the job ended; a failed job ends this process
// with the job's code. Other codes are left to the caller.
void throw_if_job_failed(const Incoming& reply) {
  if (reply.kind() != wire::Envelope::Body::ERROR) return;
  auto err = reply.envelope().getBody().getError();
  if (err.getCode() != wire::ErrorCode::SHUTTING_DOWN || !err.hasEnd()) return;
  JobEnd end = job_end_from_wire(err.getEnd());
  if (end.code != ExitCode::ok) throw_job_failure(end);
}
}  // namespace

int rank_of_member(const std::string& id) {
  const auto dot = id.rfind('.');
  if (dot == std::string::npos || dot + 1 >= id.size() || id.size() - dot > 8) return -1;
  int rank = 0;
  for (std::size_t i = dot + 1; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9') return -1;
    rank = rank * 10 + (id[i] - '0');
  }
  return rank;
}

JobEnd job_end_from_wire(wire::JobEnd::Reader end) {
  JobEnd out;
  SHOAL_REQUIRE(exit_code_from_int(end.getExitCode(), &out.code), ProtocolError,
                "the coordinator ended the job with unknown exit code " << static_cast<int>(end.getExitCode()));
  out.reason = end.getReason().cStr();
  return out;
}

void job_end_to_wire(const JobEnd& end, wire::JobEnd::Builder out) {
  out.setExitCode(static_cast<std::uint8_t>(end.code));
  out.setReason(end.reason);
}

void throw_job_failure(const JobEnd& end) {
  throw DetachedError("the job failed (" + std::string(exit_code_name(end.code)) + "): " + end.reason, end.code);
}

ControlClient::ControlClient(Network& network, const std::string& coordinator, std::string sender, Logger log,
                             Seconds request_timeout)
    : socket_(network, coordinator, log),
      sender_(std::move(sender)),
      log_(std::move(log)),
      timeout_(request_timeout),
      nonce_(draw_nonce()) {}

Outgoing ControlClient::make(std::uint64_t* request_id) {
  std::uint64_t id = next_request_++;
  if (request_id != nullptr) *request_id = id;
  return Outgoing(sender_, id);
}

Incoming ControlClient::request(Outgoing& message, Seconds timeout, const std::atomic<bool>* stop,
                                std::uint64_t accept_from) {
  std::uint64_t id = message.envelope().getRequestId();
  if (accept_from == 0) accept_from = id;
  auto kind = message.envelope().getBody().which();
  const std::uint64_t rejoins = watched_ != nullptr ? watched_->rejoins() : 0;
  socket_.send(message, to_ms(timeout));
  auto deadline = std::chrono::steady_clock::now() + to_ms(timeout);
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() < 0) left = std::chrono::milliseconds(0);
    // A stop request is noticed within 50 ms even while waiting.
    if (stop != nullptr) {
      if (stop->load()) SHOAL_THROW(TimeoutError, "stopped while waiting for the coordinator");
      left = std::min(left, std::chrono::milliseconds(50));
    }
    if (watched_ != nullptr) {
      if (watched_->rejoins() != rejoins)
        throw CoordinatorRestarted("the coordinator was restarted while " + std::string(kind_name(kind)) +
                                   " waited for its reply");
      if (abandon_when_silent_ && watched_->coordinator_silent())
        throw CoordinatorRestarted("the coordinator stopped answering while " + std::string(kind_name(kind)) +
                                   " waited for its reply");
      left = std::min(left, std::chrono::milliseconds(50));
    }
    auto reply = socket_.receive(left);
    if (!reply) {
      if (std::chrono::steady_clock::now() < deadline) continue;
      SHOAL_THROW(TimeoutError, "no reply from the coordinator at " << socket_.address() << " to " << kind_name(kind)
                                                                    << " within " << timeout.count() << " s");
    }
    if (reply->request_id() >= accept_from && reply->request_id() <= id) return std::move(*reply);
  }
}

std::optional<std::string> ControlClient::register_node(wire::Role role, int rank, const std::string& address,
                                                        Seconds deadline, const std::atomic<bool>* stop,
                                                        const RejoinClaim* rejoin) {
  auto give_up = std::chrono::steady_clock::now() + to_ms(deadline);
  // Short waits at first, so a process started just before the coordinator joins quickly.
  Seconds wait = std::min<Seconds>(timeout_, Seconds(0.25));
  std::uint64_t attempts = 0, first_request = next_request_;
  while (!stopped(stop)) {
    Outgoing msg = make();
    auto reg = msg.body().initRegister();
    reg.setRole(role);
    reg.setRank(rank);
    reg.setAddress(address);
    reg.setDevice(device_);
    reg.setNonce(nonce_);
    reg.setSettings(settings_);
    reg.setSettingsDigest(settings_digest_);
    if (rejoin != nullptr) {
      reg.setRejoin(true);
      reg.setTableVersion(rejoin->table_version);
      auto held = reg.initHeld();
      held.setKind(rejoin->held.kind == HeldWork::shard        ? wire::HeldWork::Kind::SHARD
                   : rejoin->held.kind == HeldWork::evaluation ? wire::HeldWork::Kind::EVALUATION
                                                               : wire::HeldWork::Kind::NONE);
      held.setEpoch(static_cast<std::uint32_t>(rejoin->held.epoch));
      held.setIndex(static_cast<std::uint32_t>(rejoin->held.index));
    }
    ++attempts;
    try {
      // The answer to any attempt will do: they are one registration (the nonce), and the
      // copies ZeroMQ queued while the coordinator was down are answered first.
      Incoming reply = request(msg, wait, stop, first_request);
      if (reply.kind() == wire::Envelope::Body::REGISTER_REPLY) {
        sender_ = reply.envelope().getBody().getRegisterReply().getId().cStr();
        return sender_;
      }
      throw_if_job_failed(reply);
      if (reply.kind() == wire::Envelope::Body::ERROR) {
        auto err = reply.envelope().getBody().getError();
        SHOAL_REQUIRE(err.getCode() != wire::ErrorCode::SETTINGS_DIFFER, ConfigError,
                      "the coordinator refused registration: " << err.getMessage().cStr());
        if (err.getCode() != wire::ErrorCode::NOT_READY)
          SHOAL_THROW(ProtocolError, "the coordinator refused registration: " << err.getMessage().cStr());
      }
    } catch (const TimeoutError&) {
      // The coordinator may not be up yet. The request stays queued in ZeroMQ and is delivered
      // when it comes up, as are the retries: the nonce makes them one registration.
      if (attempts == 1 || attempts % 8 == 0)
        SHOAL_LOG(log_, info,
                  "waiting for the coordinator at " << socket_.address() << " (attempt " << attempts << ")");
      else
        SHOAL_LOG(log_, debug,
                  "waiting for the coordinator at " << socket_.address() << " (attempt " << attempts << ")");
    }
    SHOAL_REQUIRE(std::chrono::steady_clock::now() < give_up, TimeoutError,
                  "could not register with the coordinator at " << socket_.address() << " within " << deadline.count()
                                                                << " s (cluster.startup_timeout_seconds)");
    wait = std::min<Seconds>(timeout_, std::min<Seconds>(wait * 2, Seconds(2.0)));
  }
  // Stopped. A coordinator that got an attempt answers within milliseconds: take a
  // registration that crossed the stop request.
  if (attempts > 0) {
    auto until = std::chrono::steady_clock::now() + std::min(to_ms(timeout_), std::chrono::milliseconds(250));
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      auto reply = socket_.receive(left);
      if (!reply) break;
      if (reply->request_id() >= first_request && reply->request_id() < next_request_ &&
          reply->kind() == wire::Envelope::Body::REGISTER_REPLY) {
        sender_ = reply->envelope().getBody().getRegisterReply().getId().cStr();
        return sender_;
      }
    }
  }
  return std::nullopt;
}

std::optional<PartitionTable> ControlClient::fetch_table(Seconds deadline, const std::atomic<bool>* stop) {
  auto give_up = std::chrono::steady_clock::now() + to_ms(deadline);
  while (!stopped(stop)) {
    Outgoing msg = make();
    msg.body().setTableRequest();
    std::optional<Incoming> answer;
    try {
      answer.emplace(request(msg, timeout_, stop));
    } catch (const TimeoutError&) {
      if (stopped(stop)) return std::nullopt;
      throw;
    }
    Incoming& reply = *answer;
    if (reply.kind() == wire::Envelope::Body::PARTITION_TABLE)
      return PartitionTable::from_wire(reply.envelope().getBody().getPartitionTable());
    throw_if_job_failed(reply);
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
  return std::nullopt;
}

namespace {

// A lease grant's task (a lease request's answer, and a sync cut's).
LeaseTask task_of_grant(const Incoming& reply) {
  LeaseTask task;
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
      task.job_end = job_end_from_wire(grant.getFinished());
      break;
    case wire::LeaseGrant::SAVE_BUFFERS:
      task.kind = LeaseTask::save_buffers;
      task.step = static_cast<std::int64_t>(grant.getSaveBuffers().getStep());
      task.dir = grant.getSaveBuffers().getDir().cStr();
      SHOAL_REQUIRE(!task.dir.empty(), ProtocolError, "a checkpoint order without a directory");
      break;
    default:
      SHOAL_THROW(ProtocolError, "unknown lease grant kind");
  }
  return task;
}

}  // namespace

LeaseTask ControlClient::request_lease() {
  Outgoing msg = make();
  msg.body().setLeaseRequest();
  Incoming reply = request(msg, timeout_);
  throw_if_dropped(reply, sender_);
  LeaseTask task;
  if (reply.kind() == wire::Envelope::Body::ERROR) {
    auto err = reply.envelope().getBody().getError();
    if (err.getCode() == wire::ErrorCode::SHUTTING_DOWN && err.hasEnd()) {
      task.kind = LeaseTask::finished;
      task.job_end = job_end_from_wire(err.getEnd());
      return task;
    }
    SHOAL_THROW(ProtocolError, "lease refused: " << err.getMessage().cStr());
  }
  return task_of_grant(reply);
}

std::optional<LeaseTask> ControlClient::sync_cut(const SyncCutRequest& cut) {
  Outgoing msg = make();
  auto c = msg.body().initSyncCut();
  c.setStep(static_cast<std::uint64_t>(cut.step));
  c.setEpoch(static_cast<std::uint32_t>(cut.epoch));
  c.setPosition(static_cast<std::uint64_t>(cut.position));
  c.setSamples(static_cast<std::uint64_t>(cut.samples));
  c.setLossSum(cut.loss_sum);
  c.setCorrect(static_cast<std::uint64_t>(cut.correct));
  c.setStop(cut.stop);
  Incoming reply = request(msg, timeout_);
  throw_if_dropped(reply, sender_);
  throw_if_job_failed(reply);
  if (reply.kind() == wire::Envelope::Body::ERROR)
    SHOAL_THROW(ProtocolError, "checkpoint cut refused: " << reply.envelope().getBody().getError().getMessage().cStr());
  LeaseTask task = task_of_grant(reply);
  if (task.kind != LeaseTask::save_buffers) return std::nullopt;
  return task;
}

void ControlClient::report_shard(std::int64_t epoch, std::int64_t index, std::int64_t samples, double loss_sum,
                                 std::int64_t correct, double seconds, double data_wait_seconds, bool resent) {
  Outgoing msg = make();
  auto d = msg.body().initLeaseDone();
  d.setEpoch(static_cast<std::uint32_t>(epoch));
  d.setIndex(static_cast<std::uint32_t>(index));
  d.setSamples(static_cast<std::uint64_t>(samples));
  d.setLossSum(loss_sum);
  d.setCorrect(static_cast<std::uint64_t>(correct));
  d.setSeconds(seconds);
  d.setDataWaitSeconds(data_wait_seconds);
  d.setResent(resent);
  throw_if_dropped(request(msg, timeout_), sender_);
}

void ControlClient::report_evaluation(std::int64_t epoch, double loss, double accuracy, std::int64_t samples) {
  Outgoing msg = make();
  auto d = msg.body().initEvalDone();
  d.setEpoch(static_cast<std::uint32_t>(epoch));
  d.setLoss(loss);
  d.setAccuracy(accuracy);
  d.setSamples(static_cast<std::uint64_t>(samples));
  throw_if_dropped(request(msg, timeout_), sender_);
}

void ControlClient::report_checkpoint(const CheckpointReport& report) {
  Outgoing msg = make();
  auto c = msg.body().initCheckpointFiles();
  c.setStep(static_cast<std::uint64_t>(report.step));
  c.setCopySeconds(report.copy_seconds);
  c.setWriteSeconds(report.write_seconds);
  auto files = c.initFiles(static_cast<unsigned>(report.files.size()));
  for (std::size_t i = 0; i < report.files.size(); ++i) {
    files[static_cast<unsigned>(i)].setName(report.files[i].name);
    files[static_cast<unsigned>(i)].setSize(report.files[i].size);
    files[static_cast<unsigned>(i)].setCrc(report.files[i].crc);
  }
  Incoming reply = request(msg, timeout_);
  throw_if_dropped(reply, sender_);
  if (reply.kind() == wire::Envelope::Body::ERROR)
    SHOAL_THROW(ProtocolError, "the coordinator refused the checkpoint files: "
                                   << reply.envelope().getBody().getError().getMessage().cStr());
}

void ControlClient::order_snapshot(std::int64_t step, const std::string& dir) {
  Outgoing msg = make();
  auto o = msg.body().initSnapshot();
  o.setStep(static_cast<std::uint64_t>(step));
  o.setDir(dir);
  Incoming reply = request(msg, timeout_);
  if (reply.kind() == wire::Envelope::Body::ERROR)
    SHOAL_THROW(ProtocolError, "snapshot refused: " << reply.envelope().getBody().getError().getMessage().cStr());
  SHOAL_REQUIRE(reply.kind() == wire::Envelope::Body::ACK, ProtocolError,
                "expected an ack of the snapshot, got " << kind_name(reply.kind()));
}

void ControlClient::store_set(const std::string& key, const std::vector<char>& value) {
  Outgoing msg = make();
  auto e = msg.body().initStoreSet();
  e.setKey(key);
  e.setValue(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(value.data()), value.size()));
  Incoming reply = request(msg, timeout_);
  throw_if_dropped(reply, sender_);
  if (reply.kind() == wire::Envelope::Body::ERROR) {
    auto err = reply.envelope().getBody().getError();
    if (err.getCode() == wire::ErrorCode::SHUTTING_DOWN && err.hasEnd())
      throw_job_failure(job_end_from_wire(err.getEnd()));
    SHOAL_THROW(ProtocolError, "store set of '" << key << "' refused: " << err.getMessage().cStr());
  }
}

std::optional<std::vector<char>> ControlClient::store_get(const std::string& key) {
  Outgoing msg = make();
  msg.body().setStoreGet(key);
  Incoming reply = request(msg, timeout_);
  throw_if_dropped(reply, sender_);
  if (reply.kind() == wire::Envelope::Body::ERROR) {
    auto err = reply.envelope().getBody().getError();
    if (err.getCode() == wire::ErrorCode::NOT_READY) return std::nullopt;
    if (err.getCode() == wire::ErrorCode::SHUTTING_DOWN && err.hasEnd())
      throw_job_failure(job_end_from_wire(err.getEnd()));
    SHOAL_THROW(ProtocolError, "store get of '" << key << "' refused: " << err.getMessage().cStr());
  }
  SHOAL_REQUIRE(reply.kind() == wire::Envelope::Body::STORE_VALUE, ProtocolError,
                "expected a store value, got " << kind_name(reply.kind()));
  auto data = reply.envelope().getBody().getStoreValue();
  return std::vector<char>(reinterpret_cast<const char*>(data.begin()), reinterpret_cast<const char*>(data.end()));
}

void CoordinatorStore::set(const std::string& key, const std::vector<char>& value) {
  auto give_up = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(deadline_);
  while (true) {
    try {
      return client_.store_set(key, value);
    } catch (const DetachedError&) {
      throw;
    } catch (const TimeoutError&) {
      if (std::chrono::steady_clock::now() >= give_up) throw;
    }
  }
}

std::optional<std::vector<char>> CoordinatorStore::try_get(const std::string& key) {
  if (watch_) watch_();
  try {
    return client_.store_get(key);
  } catch (const DetachedError&) {
    throw;
  } catch (const TimeoutError&) {
    return std::nullopt;
  }
}

ControlClient::PreemptAnswer ControlClient::preempt() {
  Outgoing msg = make();
  msg.body().setPreempt();
  // Short, as leave(): a preempted process has seconds, and a coordinator that is gone cannot help.
  Incoming reply = request(msg, std::min<Seconds>(timeout_, Seconds(2.0)));
  throw_if_dropped(reply, sender_);
  if (reply.kind() == wire::Envelope::Body::ERROR)
    SHOAL_THROW(ProtocolError, "the coordinator refused the preemption: "
                                   << reply.envelope().getBody().getError().getMessage().cStr());
  SHOAL_REQUIRE(reply.kind() == wire::Envelope::Body::PREEMPT_REPLY, ProtocolError,
                "the coordinator answered a preemption with " << kind_name(reply.kind()));
  auto r = reply.envelope().getBody().getPreemptReply();
  return PreemptAnswer{r.getWait(), r.getReason().cStr()};
}

bool ControlClient::leave() {
  Outgoing msg = make();
  msg.body().setLeave();
  try {
    // Short: a process being stopped (Kubernetes gives 30 s) must not wait a whole request
    // timeout for a coordinator that is gone; it would be declared dead anyway.
    request(msg, std::min<Seconds>(timeout_, Seconds(2.0)));
    return true;
  } catch (const TimeoutError& e) {
    SHOAL_LOG(log_, warn, "the coordinator did not acknowledge leaving: " << e.what());
    return false;
  }
}

Heartbeat::Heartbeat(Network& network, const std::string& coordinator, const std::string& sender, Logger log,
                     Seconds interval, Seconds dead_after)
    : network_(network), log_(std::move(log)), interval_(interval), dead_after_(dead_after) {
  last_ok_ns_ = std::chrono::steady_clock::now().time_since_epoch().count();
  thread_ = std::thread(&Heartbeat::loop, this, coordinator, sender, interval, dead_after);
}

void Heartbeat::enable_rejoin(Identity identity, Seconds grace) {
  std::lock_guard<std::mutex> lock(mutex_);
  identity_ = std::move(identity);
  grace_ = grace;
  rejoin_enabled_ = grace.count() > 0;
}

void Heartbeat::set_claim(const RejoinClaim& claim) {
  std::lock_guard<std::mutex> lock(mutex_);
  claim_ = claim;
}

void Heartbeat::set_held(const HeldWork& held) {
  std::lock_guard<std::mutex> lock(mutex_);
  claim_.held = held;
}

bool Heartbeat::coordinator_silent() const {
  const auto last = std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(last_ok_ns_.load()));
  return std::chrono::steady_clock::now() - last > to_ms(dead_after_);
}

bool Heartbeat::await_rejoin(std::uint64_t seen, const std::atomic<bool>* stop, bool or_answering) const {
  while (rejoins_ == seen && !(or_answering && !coordinator_silent())) {
    if (stopped(stop)) return false;
    if (auto end = job_end(); end && end->code != ExitCode::ok) throw_job_failure(*end);
    check();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

Heartbeat::~Heartbeat() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

std::vector<std::string> Heartbeat::live_workers() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return live_workers_;
}

std::optional<JobEnd> Heartbeat::job_end() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return job_end_;
}

void Heartbeat::check() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (failure_ && detached_) throw DetachedError(failure_->message, failure_->code);
  if (failure_) throw Error(failure_->message, failure_->code);
}

void Heartbeat::rejoin(std::unique_ptr<ControlClient>& registration, const std::string& coordinator,
                       const std::string& sender) {
  Identity who;
  RejoinClaim claim;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    who = identity_;
    claim = claim_;
  }
  // One client (one nonce) for every attempt: a registration whose reply was lost is answered
  // again the same way, not refused as a second one.
  if (!registration) registration = std::make_unique<ControlClient>(network_, coordinator, sender, log_, interval_);
  registration->set_device(who.device);
  registration->set_job_settings(who.settings, who.settings_digest);
  auto id =
      registration->register_node(who.role, who.rank, who.address, std::max(interval_, Seconds(0.5)), &stop_, &claim);
  if (!id) return;  // stopped
  SHOAL_REQUIRE(*id == sender, ProtocolError, "the restarted coordinator registered " << sender << " again as " << *id);
  SHOAL_LOG(log_, warn,
            "registered again with the restarted coordinator"
                << (claim.held.kind == HeldWork::shard ? ", holding epoch " + std::to_string(claim.held.epoch) +
                                                             " shard " + std::to_string(claim.held.index)
                    : claim.held.kind == HeldWork::evaluation ? ", evaluating epoch " + std::to_string(claim.held.epoch)
                                                              : std::string()));
  ++rejoins_;
}

void Heartbeat::loop(std::string coordinator, std::string sender, Seconds interval, Seconds dead_after) {
  // The thread's boundary: nothing escapes it (an escaping exception is std::terminate).
  auto fail = [&](Failure f, bool detached = false) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (failure_) return;
    failure_ = std::move(f);
    detached_ = detached;
  };
  try {
    ControlClient client(network_, coordinator, sender, log_, interval);
    auto last_ok = std::chrono::steady_clock::now();
    bool silence_logged = false;
    std::unique_ptr<ControlClient> registration;  // failover: registering again
    auto heard = [&] {
      last_ok = std::chrono::steady_clock::now();
      last_ok_ns_ = last_ok.time_since_epoch().count();
      silence_logged = false;
    };
    while (!stop_ && !ended_) {
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
          std::vector<std::string> live;
          for (auto w : r.getLiveWorkers()) live.emplace_back(w.cStr());
          std::optional<JobEnd> end;
          if (r.hasEnd()) end = job_end_from_wire(r.getEnd());
          {
            std::lock_guard<std::mutex> lock(mutex_);
            live_workers_ = std::move(live);
            if (end) job_end_ = end;
          }
          // A coordinator that took the job over says table version 0 until every member is back:
          // its live set is not the job's yet.
          if (r.getTableVersion() != 0 || end) {
            generation_ = r.getGeneration();
            table_version_ = r.getTableVersion();
          }
          if (end) ended_ = true;
          heard();
        } else if (reply.kind() == wire::Envelope::Body::ERROR) {
          auto err = reply.envelope().getBody().getError();
          if (err.getCode() == wire::ErrorCode::SHUTTING_DOWN && err.hasEnd()) {
            JobEnd end = job_end_from_wire(err.getEnd());
            std::lock_guard<std::mutex> lock(mutex_);
            job_end_ = end;
            ended_ = true;
          } else if (err.getCode() == wire::ErrorCode::COORDINATOR_RESTARTED && rejoin_enabled_) {
            rejoin(registration, coordinator, sender);
            heard();
          } else {
            // The coordinator no longer counts us (declared dead while we were unreachable).
            fail(Failure{ExitCode::timeout,
                         sender + " was dropped from the job: the coordinator says: " + err.getMessage().cStr()},
                 /*detached=*/true);
            return;
          }
        }
      } catch (const TimeoutError&) {
      } catch (...) {
        Failure f = failure_of(std::current_exception());
        if (f.code != ExitCode::protocol) throw;
        SHOAL_LOG(log_, warn, "heartbeat reply dropped: " << f.message);  // a malformed reply: try again
      }
      Seconds grace = dead_after;
      if (rejoin_enabled_) {
        std::lock_guard<std::mutex> lock(mutex_);
        grace = std::max(grace, grace_);
      }
      const auto silent = std::chrono::steady_clock::now() - last_ok;
      if (silent > dead_after && grace > dead_after && !silence_logged) {
        SHOAL_LOG(log_, warn,
                  "no heartbeat reply from the coordinator for "
                      << dead_after.count() << " s: working on with what this process holds for up to " << grace.count()
                      << " s (cluster.coordinator_grace_seconds) while a restarted coordinator takes the job over");
        silence_logged = true;
      }
      if (silent > grace) {
        SHOAL_LOG(log_, error, "no heartbeat reply from the coordinator for " << grace.count() << " s");
        std::ostringstream what;
        what << sender << " lost the coordinator (no heartbeat reply for " << grace.count() << " s"
             << (grace > dead_after ? ", cluster.coordinator_grace_seconds" : "") << ")";
        fail(Failure{ExitCode::timeout, what.str()}, /*detached=*/true);
        return;
      }
      auto next = started + to_ms(interval);
      while (!stop_ && std::chrono::steady_clock::now() < next)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  } catch (...) {
    Failure f = failure_of(std::current_exception());
    SHOAL_LOG(log_, error, "heartbeat thread failed: " << f.message);
    fail(std::move(f));
  }
}

}  // namespace shoal
