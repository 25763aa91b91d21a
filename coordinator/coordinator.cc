#include "coordinator/coordinator.h"

#include <cstdio>
#include <sstream>

#include "coordinator/partitioner.h"
#include "coordinator/sync_book.h"
#include "core/backend.h"
#include "core/error.h"
#include "models/dataset.h"
#include "models/model.h"

namespace shoal {
namespace {

std::chrono::milliseconds ms(double seconds) {
  return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000));
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

Coordinator::Coordinator(Network& network, const JobConfig& config, Logger log, MetricsWriter& metrics)
    : config_(config),
      log_(std::move(log)),
      metrics_(metrics),
      socket_(network, config.coordinator_address, log_),
      members_(ms(config.dead_after_seconds)),
      sync_(config.strategy == "sync"),
      servers_wanted_(sync_ ? 0 : config.servers) {
  DatasetInfo info = probe_train_set(config.data_format, config.data_dir, config.train_limit);
  train_samples_ = info.count;
  // The model's layout (not its values) decides the partition table.
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  auto model = build_model(config.model, Shape{info.channels, info.height, info.width}, info.classes);
  model->build(*backend, config.seed);
  model_elements_ = model->params().parameter_count();
  SHOAL_LOG(log_, info,
            "listening on " << socket_.endpoint() << "; model " << config.model << " has " << model_elements_
                            << " parameters; " << train_samples_ << " training samples; "
                            << (sync_ ? "sync job, waiting for " + std::to_string(config.workers) + " ranks"
                                      : "waiting for " + std::to_string(config.servers) + " servers and " +
                                            std::to_string(config.workers) + " workers"));
}

void Coordinator::reply_error(const Incoming& in, wire::ErrorCode code, const std::string& message) {
  Outgoing out("coordinator", in.request_id());
  auto err = out.body().initError();
  err.setCode(code);
  err.setMessage(message);
  if (code == wire::ErrorCode::SHUTTING_DOWN && end_) job_end_to_wire(*end_, err.initEnd());
  socket_.send(in.peer, out);
}

void Coordinator::reply_register(const Incoming& in, const Member& m) {
  Outgoing out("coordinator", in.request_id());
  auto r = out.body().initRegisterReply();
  r.setId(m.id);
  r.setRank(m.rank);
  socket_.send(in.peer, out);
}

void Coordinator::reply_job_over(const Incoming& in) {
  told_[in.sender()] = true;
  reply_error(in, wire::ErrorCode::SHUTTING_DOWN, "the job is over: " + end_->reason);
}

void Coordinator::end_job(ExitCode code, const std::string& reason) {
  if (end_) return;
  end_ = JobEnd{code, reason};
  if (code == ExitCode::ok)
    SHOAL_LOG(log_, info, "the job is over; telling every process");
  else
    SHOAL_LOG(log_, error, "the job failed (" << exit_code_name(code) << "): " << reason << "; telling every process");
}

void Coordinator::publish_table() {
  if (sync_) {
    // No servers: the table only says the job started (every rank registered).
    PartitionTable t;
    // The membership generation the world forms in: every rank reads it from this one table
    // (a rank's own heartbeat may not have seen the last registration yet).
    t.version = members_.generation();
    t.total_elements = model_elements_;
    t.chunks.push_back(ChunkSpan{0, static_cast<std::uint32_t>(model_elements_)});
    t.train_samples = train_samples_;
    t.steps_per_epoch = std::max<std::int64_t>(1, train_samples_ / (config_.batch_size * config_.workers));
    table_ = t;
    book_ = std::make_unique<SyncBook>(train_samples_, config_.epochs, static_cast<int>(config_.workers));
    SHOAL_LOG(log_, info, "every rank registered; the sync job starts with " << config_.workers << " ranks");
    return;
  }
  std::vector<ServerRange> servers;
  for (const auto* m : members_.members(wire::Role::SERVER, true))
    servers.push_back(ServerRange{m->id, m->address, 0, 0});
  PartitionTable t = make_partition(model_elements_, config_.chunk_kib * 1024 / 4, servers);
  t.version = 1;
  t.train_samples = train_samples_;
  // Server-side schedules count updates: one per worker push, or one per averaged step when
  // synchronous.
  std::int64_t batch = config_.batch_size * (config_.staleness == 0 ? config_.workers : 1);
  t.steps_per_epoch = std::max<std::int64_t>(1, (train_samples_ + batch - 1) / batch);
  table_ = t;
  book_ = std::make_unique<LeaseBook>(train_samples_, config_.shard_size, config_.epochs,
                                      ms(config_.lease_timeout_seconds));
  std::string layout;
  for (const auto& s : t.servers)
    layout += " " + s.id + "=keys[" + std::to_string(s.first_key) + "," + std::to_string(s.end_key) + ")/" +
              std::to_string(t.server_elements(&s - t.servers.data())) + " values";
  SHOAL_LOG(
      log_, info,
      "partition table: " << t.chunks.size() << " chunks of up to " << t.chunks.front().numel << " values;" << layout);
}

bool Coordinator::everyone_told() const {
  for (wire::Role role : {wire::Role::SERVER, wire::Role::WORKER})
    for (const auto* m : members_.members(role, true))
      if (!told_.count(m->id)) return false;
  return true;
}

void Coordinator::handle(Incoming& in, Clock::time_point now) {
  using K = wire::Envelope::Body;
  auto body = in.envelope().getBody();
  const std::string sender = in.sender();
  const bool over = end_.has_value();
  if (in.kind() == K::REGISTER) {
    auto reg = body.getRegister();
    // Retries of one process's registration carry its nonce: every copy gets the same answer,
    // so copies queued while the coordinator was not up do not register the process again.
    if (auto seen = registrations_.find(reg.getNonce()); seen != registrations_.end()) {
      if (const Member* m = members_.find(seen->second)) reply_register(in, *m);
      return;
    }
    if (over) return reply_job_over(in);
    if (table_) {
      reply_error(in, wire::ErrorCode::BAD_REQUEST,
                  "the job has started; joining a running job is not supported yet (elasticity)");
      return;
    }
    bool server = reg.getRole() == wire::Role::SERVER;
    std::size_t have = members_.count(reg.getRole(), true),
                want = static_cast<std::size_t>(server ? servers_wanted_ : config_.workers);
    if (reg.getRole() == wire::Role::COORDINATOR || have >= want) {
      reply_error(in, wire::ErrorCode::BAD_REQUEST,
                  std::string("the job expects ") + std::to_string(want) + " " + (server ? "servers" : "workers"));
      return;
    }
    try {
      const Member& m = members_.add(reg.getRole(), reg.getRank(), reg.getAddress().cStr(), now);
      registrations_[reg.getNonce()] = m.id;
      reply_register(in, m);
      if (sync_)
        SHOAL_LOG(log_, info,
                  "registered " << m.id << " as rank " << m.rank << " (" << members_.count(wire::Role::WORKER, true)
                                << "/" << config_.workers << " ranks)");
      else
        SHOAL_LOG(log_, info,
                  "registered " << m.id << (m.address.empty() ? "" : " at " + m.address) << " ("
                                << members_.count(wire::Role::SERVER, true) << "/" << config_.servers << " servers, "
                                << members_.count(wire::Role::WORKER, true) << "/" << config_.workers << " workers)");
    } catch (const ProtocolError& e) {
      reply_error(in, wire::ErrorCode::BAD_REQUEST, e.what());
    }
    return;
  }

  const Member* member = members_.find(sender);
  // Heartbeats and lease requests carry the job's end in their own replies.
  if (over && member != nullptr && in.kind() != K::HEARTBEAT && in.kind() != K::LEASE_REQUEST)
    return reply_job_over(in);
  if (member == nullptr || !member->alive) {
    socket_.reject("unknown sender", kind_name(in.kind()) + std::string(" from '") + sender + "'");
    reply_error(in, wire::ErrorCode::UNKNOWN_SENDER, sender + " is not a live member of this job");
    return;
  }
  members_.heard_from(sender, now);

  switch (in.kind()) {
    case K::HEARTBEAT: {
      Outgoing out("coordinator", in.request_id());
      auto r = out.body().initHeartbeatReply();
      r.setGeneration(members_.generation());
      auto live = members_.live_workers();
      auto list = r.initLiveWorkers(static_cast<unsigned>(live.size()));
      for (std::size_t i = 0; i < live.size(); ++i) list.set(static_cast<unsigned>(i), live[i]);
      if (over) {
        job_end_to_wire(*end_, r.initEnd());
        told_[sender] = true;
      }
      socket_.send(in.peer, out);
      return;
    }
    case K::TABLE_REQUEST: {
      if (!table_) {
        reply_error(in, wire::ErrorCode::NOT_READY, "the partition table is not published yet");
        return;
      }
      table_->live_workers = members_.live_workers();
      Outgoing out("coordinator", in.request_id());
      table_->to_wire(out.body().initPartitionTable());
      socket_.send(in.peer, out);
      return;
    }
    case K::LEASE_REQUEST: {
      if (member->role != wire::Role::WORKER || !book_) {
        reply_error(in, wire::ErrorCode::NOT_READY, "no leases before the job starts");
        return;
      }
      Outgoing out("coordinator", in.request_id());
      auto grant = out.body().initLeaseGrant();
      LeaseBook::Task task;
      if (over) {
        task.kind = LeaseBook::Task::finished;
      } else {
        task = book_->next(sender, now);
        if (task.kind == LeaseBook::Task::finished) end_job(ExitCode::ok, "every epoch is done");
      }
      switch (task.kind) {
        case LeaseBook::Task::train: {
          auto s = grant.initShard();
          s.setEpoch(static_cast<std::uint32_t>(task.shard.epoch));
          s.setIndex(static_cast<std::uint32_t>(task.shard.index));
          s.setBegin(static_cast<std::uint64_t>(task.shard.begin));
          s.setEnd(static_cast<std::uint64_t>(task.shard.end));
          break;
        }
        case LeaseBook::Task::evaluate:
          grant.setEvaluate(static_cast<std::uint32_t>(task.epoch));
          break;
        case LeaseBook::Task::wait:
          grant.setWait(20);
          break;
        case LeaseBook::Task::finished:
          job_end_to_wire(*end_, grant.initFinished());
          members_.mark_finished(sender);
          told_[sender] = true;
          break;
      }
      socket_.send(in.peer, out);
      return;
    }
    case K::LEASE_DONE: {
      auto d = body.getLeaseDone();
      if (book_) {
        ShardStats stats{static_cast<std::int64_t>(d.getSamples()), d.getLossSum(),
                         static_cast<std::int64_t>(d.getCorrect())};
        if (!book_->complete(sender, d.getEpoch(), d.getIndex(), stats, d.getSeconds(), now))
          SHOAL_LOG(
              log_, debug,
              sender << " finished epoch " << d.getEpoch() << " shard " << d.getIndex() << ", which was already done");
      }
      Outgoing out("coordinator", in.request_id());
      out.body().setAck();
      socket_.send(in.peer, out);
      return;
    }
    case K::LEAVE: {
      // A worker stopping early (SIGTERM): the same as its death, without the wait.
      if (member->role == wire::Role::WORKER) {
        members_.mark_dead(sender);
        worker_gone(sender, "left the job");
      }
      told_[sender] = true;
      Outgoing out("coordinator", in.request_id());
      out.body().setAck();
      socket_.send(in.peer, out);
      return;
    }
    case K::STORE_SET: {
      auto e = body.getStoreSet();
      std::string key = e.getKey().cStr();
      if (!store_.count(key) && store_.size() >= kMaxStoreKeys) {
        reply_error(in, wire::ErrorCode::BAD_REQUEST, "the rendezvous store is full");
        return;
      }
      auto v = e.getValue();
      store_[key] = std::string(reinterpret_cast<const char*>(v.begin()), v.size());
      Outgoing out("coordinator", in.request_id());
      out.body().setAck();
      socket_.send(in.peer, out);
      return;
    }
    case K::STORE_GET: {
      auto it = store_.find(body.getStoreGet().cStr());
      if (it == store_.end()) {
        reply_error(in, wire::ErrorCode::NOT_READY, "no such key yet");
        return;
      }
      Outgoing out("coordinator", in.request_id());
      out.body().setStoreValue(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(it->second.data()), it->second.size()));
      socket_.send(in.peer, out);
      return;
    }
    case K::EVAL_DONE: {
      auto d = body.getEvalDone();
      if (book_) book_->evaluated(sender, d.getEpoch(), d.getLoss(), d.getAccuracy());
      Outgoing out("coordinator", in.request_id());
      out.body().setAck();
      socket_.send(in.peer, out);
      return;
    }
    default:
      socket_.reject("unexpected message kind", kind_name(in.kind()) + std::string(" from ") + sender);
      reply_error(in, wire::ErrorCode::BAD_REQUEST,
                  std::string("the coordinator does not handle ") + kind_name(in.kind()));
  }
}

void Coordinator::worker_gone(const std::string& id, const std::string& how) {
  if (sync_) {
    const Member* m = members_.find(id);
    std::string who = id + " (rank " + std::to_string(m != nullptr ? m->rank : -1) + ")";
    SHOAL_LOG(log_, error, who << " " << how);
    if (table_ && !(book_ && book_->finished()))
      end_job(ExitCode::peer_lost, "lost " + who + ", " + how +
                                       "; a sync job cannot go on without every rank (elastic recovery is not "
                                       "supported yet)");
    return;
  }
  int returned = book_ ? book_->release(id) : 0;
  SHOAL_LOG(log_, warn,
            id << " " << how << "; " << returned << " leased shard(s) back in the queue; "
               << members_.live_workers().size() << " workers remain");
  if (book_ && members_.live_workers().empty() && !book_->finished())
    end_job(ExitCode::peer_lost, "every worker is gone before the job finished");
}

void Coordinator::check_liveness(Clock::time_point now) {
  for (const auto& id : members_.expire(now)) {
    const Member* m = members_.find(id);
    if (m->role == wire::Role::WORKER) {
      std::ostringstream how;
      how << "declared dead (no heartbeat for " << config_.dead_after_seconds << " s)";
      worker_gone(id, how.str());
    } else if (m->role == wire::Role::SERVER && table_) {
      end_job(ExitCode::peer_lost, "parameter server " + id +
                                       " stopped answering heartbeats; the job cannot continue without it "
                                       "(restoring a server from a checkpoint is not supported yet)");
    }
  }
  if (book_) {
    int expired = book_->expire(now);
    if (expired > 0) SHOAL_LOG(log_, warn, expired << " shard lease(s) expired and went back to the queue");
  }
}

void Coordinator::report_epochs(Clock::time_point now) {
  if (!book_) return;
  for (const EpochReport& r : book_->take_completed()) {
    double seconds = seconds_between(r.started, r.completed);
    double train_loss = r.samples_done > 0 ? r.loss_sum / static_cast<double>(r.samples_done) : 0;
    double train_acc = r.samples_done > 0 ? static_cast<double>(r.correct) / static_cast<double>(r.samples_done) : 0;
    // Sync: training time of the slowest rank (evaluation excluded), as the benchmark measures.
    double rate = r.train_seconds > 0 ? static_cast<double>(r.samples_processed) / r.train_seconds
                  : seconds > 0       ? static_cast<double>(r.samples_processed) / seconds
                                      : 0;
    char line[400];
    std::snprintf(line, sizeof(line),
                  "epoch %lld/%lld  train loss %.4f acc %.2f%%  |  test loss %.4f acc %.2f%%  |  %.0f samples/s  |  "
                  "%lld/%lld samples done, %lld processed, %lld shard(s) re-leased",
                  static_cast<long long>(r.epoch), static_cast<long long>(config_.epochs), train_loss, 100 * train_acc,
                  r.test_loss, 100 * r.test_accuracy, rate, static_cast<long long>(r.samples_done),
                  static_cast<long long>(r.samples_total), static_cast<long long>(r.samples_processed),
                  static_cast<long long>(r.shards_released));
    std::printf("%s\n", line);
    std::fflush(stdout);
    metrics_.write({{"event", std::string("epoch")},
                    {"epoch", r.epoch},
                    {"train_loss", train_loss},
                    {"train_accuracy", train_acc},
                    {"test_loss", r.test_loss},
                    {"test_accuracy", r.test_accuracy},
                    {"samples_per_second", rate},
                    {"seconds", seconds},
                    {"samples_total", r.samples_total},
                    {"samples_done", r.samples_done},
                    {"samples_processed", r.samples_processed},
                    {"shards_released", r.shards_released},
                    {"elapsed", seconds_between(started_, now)}});
    result_.epochs.push_back(r);
    result_.final_test_accuracy = r.test_accuracy;
  }
}

CoordinatorResult Coordinator::run() {
  started_ = Clock::now();
  auto startup_deadline = started_ + ms(config_.startup_timeout_seconds);
  std::optional<Clock::time_point> end_deadline, told_at;
  while (true) {
    auto in = socket_.receive(std::chrono::milliseconds(20));
    auto now = Clock::now();
    if (in) {
      try {
        handle(*in, now);
      } catch (const kj::Exception& e) {
        socket_.reject("malformed field", e.getDescription().cStr());
      }
    }
    if (stop_) end_job(ExitCode::timeout, "the coordinator was stopped before the job finished");
    check_liveness(now);
    if (!table_ && !end_) {
      if (members_.count(wire::Role::SERVER, true) == static_cast<std::size_t>(servers_wanted_) &&
          members_.count(wire::Role::WORKER, true) == static_cast<std::size_t>(config_.workers)) {
        publish_table();
        metrics_.write({{"event", std::string("start")},
                        {"model", config_.model},
                        {"parameters", model_elements_},
                        {"train_samples", train_samples_},
                        {"strategy", config_.strategy},
                        {"servers", servers_wanted_},
                        {"workers", config_.workers},
                        {"staleness", config_.staleness}});
      } else if (now > startup_deadline) {
        std::ostringstream what;
        what << "only " << members_.count(wire::Role::SERVER, true) << "/" << servers_wanted_ << " servers and "
             << members_.count(wire::Role::WORKER, true) << "/" << config_.workers << " workers registered within "
             << config_.startup_timeout_seconds << " s (cluster.startup_timeout_seconds)";
        end_job(ExitCode::timeout, what.str());
      }
    }
    report_epochs(now);
    if (book_ && book_->finished()) end_job(ExitCode::ok, "every epoch is done");
    if (!end_) continue;
    // Every member hears how the job ended (in its next heartbeat, lease or table request);
    // one that never asks again is not waited for past two liveness periods.
    if (!end_deadline) end_deadline = now + 2 * ms(config_.dead_after_seconds + config_.heartbeat_seconds);
    // "Told" means the reply was sent, not that it arrived: keep answering for two more
    // heartbeat periods, so a reply still on its way is delivered and a process whose
    // heartbeat crossed ours hears the job's end, instead of finding the coordinator gone.
    if (everyone_told() && !told_at) told_at = now;
    if ((told_at && now > *told_at + 2 * ms(config_.heartbeat_seconds)) || now > *end_deadline) break;
  }
  if (end_->code != ExitCode::ok) throw Error(end_->reason, end_->code);
  double total = seconds_between(started_, Clock::now());
  if (sync_)
    std::printf("final test accuracy: %.2f%% (%s, sync, %lld workers, %lld epochs, %.1f s)\n",
                100 * result_.final_test_accuracy, config_.model.c_str(), static_cast<long long>(config_.workers),
                static_cast<long long>(config_.epochs), total);
  else
    std::printf(
        "final test accuracy: %.2f%% (%s, async, %lld servers, %lld workers, staleness %lld, %lld epochs, %.1f s)\n",
        100 * result_.final_test_accuracy, config_.model.c_str(), static_cast<long long>(config_.servers),
        static_cast<long long>(config_.workers), static_cast<long long>(config_.staleness),
        static_cast<long long>(config_.epochs), total);
  std::fflush(stdout);
  metrics_.write({{"event", std::string("end")},
                  {"final_test_accuracy", result_.final_test_accuracy},
                  {"seconds", total},
                  {"dropped_messages", static_cast<std::int64_t>(socket_.counters().total_dropped())}});
  return result_;
}

}  // namespace shoal
