#include "coordinator/coordinator.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "base/error.h"
#include "checkpoint/state_io.h"
#include "coordinator/partitioner.h"
#include "coordinator/sync_book.h"
#include "data/source.h"
#include "models/model.h"
#include "models/model_file.h"

namespace shoal {
namespace {

// The `layout` file: every parameter and buffer with its element range and shape.
std::string model_layout(const std::string& model, const ParameterSet& params, const DatasetInfo& data) {
  std::ostringstream out;
  out << "model " << model << "\nparameters " << params.parameter_count() << "\n";
  // What the model takes and names: an export and a server say which class it predicted.
  out << "input " << data.channels << "x" << data.height << "x" << data.width << "\nclasses " << data.classes << "\n";
  for (std::size_t c = 0; c < data.class_names.size(); ++c) out << "class " << c << " " << data.class_names[c] << "\n";
  auto shape = [](const Shape& s) {
    std::ostringstream text;
    for (std::size_t i = 0; i < s.rank(); ++i) text << (i ? "x" : "") << s[i];
    return s.rank() == 0 ? std::string("1") : text.str();
  };
  for (const auto& p : params.parameters())
    out << "param " << p->name << " " << p->offset << " " << p->offset + p->shape.numel() << " " << shape(p->shape)
        << "\n";
  for (const auto& b : params.buffers())
    out << "buffer " << b->name << " " << b->offset << " " << b->offset + b->shape.numel() << " " << shape(b->shape)
        << "\n";
  return out.str();
}

// The job's configuration as an INI file (the `job.ini` of a checkpoint).
std::string config_ini(const JobConfig& config) {
  SettingsRegistry registry;
  std::map<std::string, std::vector<std::string>> sections;
  for (const Setting& s : registry.settings()) {
    auto dot = s.key.find('.');
    std::string section = dot == std::string::npos ? "" : s.key.substr(0, dot);
    sections[section].push_back(s.key.substr(dot == std::string::npos ? 0 : dot + 1) + " = " + s.get(config));
  }
  std::string out = "# the configuration of the job that wrote this checkpoint\n";
  for (const auto& [section, lines] : sections) {
    if (!section.empty()) out += "\n[" + section + "]\n";
    for (const auto& line : lines) out += line + "\n";
  }
  return out;
}

// Beside the checkpoints: the job's live data position (failover, write_live_state).
constexpr const char* kLiveStateFile = "coordinator-state";

// The end a live state records (`over CODE`, `reason TEXT`), if the job had ended.
std::optional<JobEnd> ended_job(const std::string& state) {
  std::istringstream in(state);
  std::string line;
  std::optional<JobEnd> end;
  while (std::getline(in, line)) {
    int code = 0;
    if (line.rfind("over ", 0) == 0 && std::sscanf(line.c_str(), "over %d", &code) == 1) {
      end.emplace();
      if (!exit_code_from_int(code, &end->code)) end->code = ExitCode::internal;
    } else if (end && line.rfind("reason ", 0) == 0) {
      end->reason = line.substr(7);
    }
  }
  return end;
}

std::int64_t position_step(const std::string& position, const std::string& file) {
  std::istringstream in(position);
  std::string key;
  long long step = -1;
  while (in >> key) {
    if (key == "step" && (in >> step)) break;
    in.ignore(1 << 20, '\n');
  }
  SHOAL_REQUIRE(step >= 0, CheckpointError, file << " has no step");
  return step;
}

}  // namespace

Coordinator::Coordinator(Network& network, const JobConfig& config, Logger log, MetricsWriter& metrics)
    : network_(network),
      config_(config),
      settings_text_(job_settings_text(config, SettingsRegistry())),
      settings_digest_(settings_digest(settings_text_)),
      log_(std::move(log)),
      metrics_(metrics),
      socket_(network, config.coordinator_address, log_),
      members_(seconds_to_duration(config.dead_after_seconds)),
      sync_(config.sync()),
      servers_wanted_(sync_ ? 0 : config.servers),
      failure_(FailureSettings{sync_, config.sync_elastic, config.staleness}) {
  DatasetInfo info = probe_train_set(config.data, log_);
  train_samples_ = info.count;
  // The model's layout (not its values: no memory, no backend) decides the partition table.
  auto model = build_model(config.model, Shape{info.channels, info.height, info.width}, info.classes);
  model->declare();
  model_elements_ = model->params().parameter_count();
  layout_ = model_layout(config.model, model->params(), info);
  has_buffers_ = !model->params().buffers().empty();
  checkpoints_.emplace(
      CheckpointSettings{config.checkpoint_dir, static_cast<int>(config.checkpoint_keep), config.checkpoint_every_steps,
                         config.checkpoint_every_seconds, config.request_timeout_seconds, config.dead_after_seconds,
                         config.checkpoint_on_term_older_than, config.seed},
      layout_, config_ini(config), log_, metrics_);
  SHOAL_LOG(log_, info,
            "listening on " << socket_.endpoint() << "; model " << config.model << " has " << model_elements_
                            << " parameters; " << train_samples_ << " training samples; "
                            << (sync_ ? "sync job, waiting for " + std::to_string(config.workers) + " ranks"
                                      : "waiting for " + std::to_string(config.servers) + " servers and " +
                                            std::to_string(config.workers) + " workers"));
  SHOAL_REQUIRE(!config.checkpoint_resume.empty(), ConfigError,
                "checkpoint.resume is empty: it is auto, never or the path of a checkpoint directory");
  const bool named = config.checkpoint_resume != "auto" && config.checkpoint_resume != "never";
  if (!config.checkpoint_dir.empty() || named) resume_from_checkpoint();
  if (!sync_ && !config.checkpoint_dir.empty()) {
    live_state_path_ = (std::filesystem::path(config.checkpoint_dir) / kLiveStateFile).string();
    std::error_code ec;
    if (std::filesystem::exists(live_state_path_, ec)) {
      try {
        std::string text = read_whole_file(live_state_path_);
        position_step(text, live_state_path_);
        if (auto ended = ended_job(text)) {
          // Killed after it decided the job's end, before it told everyone: the members still
          // waiting for it (cluster.coordinator_grace_seconds) hear it now. Older than that,
          // nobody waits: the file is left over, and this is a new run.
          const auto age =
              std::filesystem::file_time_type::clock::now() - std::filesystem::last_write_time(live_state_path_, ec);
          if (!ec && age < std::chrono::duration_cast<std::filesystem::file_time_type::duration>(
                               seconds_to_duration(config.coordinator_grace_seconds + config.dead_after_seconds))) {
            end_ = *ended;
            ended_before_restart_ = true;
            taken_over_ = std::move(text);
            SHOAL_LOG(log_, warn,
                      "found " << live_state_path_ << ": the job had ended (" << ended->reason
                               << ") before this coordinator was restarted; telling the members still waiting");
          } else {
            SHOAL_LOG(
                log_, info,
                "ignoring " << live_state_path_
                            << ": left over from a run that ended longer ago than cluster.coordinator_grace_seconds");
          }
        } else {
          taken_over_ = std::move(text);
          SHOAL_LOG(log_, warn,
                    "found " << live_state_path_
                             << ": this coordinator was restarted while the job ran; it takes the job over once its "
                                "members have registered again");
        }
      } catch (const Error& e) {
        SHOAL_LOG(log_, warn, "not taking over from " << live_state_path_ << ": " << e.what());
      }
    }
  }
}

void Coordinator::write_live_state() {
  if (live_state_path_.empty() || !book_) return;
  std::string text = "format 1\nstep " + std::to_string(steps_) + "\nseed " + std::to_string(config_.seed) +
                     "\ntable_version " + std::to_string(table_ ? table_->version : 0) + "\n" + book_->save();
  if (end_) {
    std::string reason = end_->reason;
    std::replace(reason.begin(), reason.end(), '\n', ' ');
    text += "over " + std::to_string(static_cast<int>(end_->code)) + "\nreason " + reason + "\n";
  }
  try {
    std::error_code ec;
    std::filesystem::create_directories(config_.checkpoint_dir, ec);
    write_file_atomic(config_.checkpoint_dir, kLiveStateFile, text);
  } catch (const Error& e) {
    // Training goes on; a restarted coordinator would take the job over from an older position
    // (shards done since then are trained again) or, without the file, not at all.
    SHOAL_LOG(log_, error, "cannot write the job's live state: " << e.what());
  }
}

void Coordinator::note_rejoin(wire::Register::Reader reg, const std::string& id) {
  if (reg.getRole() == wire::Role::SERVER) {
    ++servers_kept_state_;
  } else if (reg.hasHeld() && reg.getHeld().getKind() != wire::HeldWork::Kind::NONE) {
    auto h = reg.getHeld();
    held_[id] = HeldWork{h.getKind() == wire::HeldWork::Kind::SHARD ? HeldWork::shard : HeldWork::evaluation,
                         static_cast<std::int64_t>(h.getEpoch()), static_cast<std::int64_t>(h.getIndex())};
  }
  rejoined_table_version_ = std::max<std::uint64_t>(rejoined_table_version_, reg.getTableVersion());
}

bool Coordinator::takeover_assembled(Clock::time_point now) const {
  // Every server (a server's state is the job's); the workers that are back once the others had
  // a liveness period to knock (one that comes later joins the running job).
  const std::size_t servers = members_.count(wire::Role::SERVER, true),
                    workers = members_.count(wire::Role::WORKER, true);
  if (servers < static_cast<std::size_t>(servers_wanted_) || workers == 0) return false;
  return workers >= static_cast<std::size_t>(config_.workers) ||
         now - started_ > seconds_to_duration(config_.dead_after_seconds);
}

void Coordinator::take_over(Clock::time_point now) {
  // A server that kept its state holds the job's parameters as trained up to now: the live
  // position (every shard reported done, up to this moment) goes with them. No server kept its
  // state (the whole job was restarted): the newest checkpoint, as any restart.
  const bool live = servers_kept_state_ > 0;
  if (live) {
    if (checkpoints_->newest_step() < 0) {
      if (auto found = find_resumable(config_.checkpoint_dir, [](const std::string&, const std::string&) {})) {
        const std::string position = *found + "/" + checkpoint_file::kPosition;
        checkpoints_->restored(position_step(read_whole_file(position), position), *found);
      }
    }
    restored_position_ = *taken_over_;
    steps_ = position_step(restored_position_, live_state_path_);
    restored_from_ = checkpoints_->newest_dir();
  }
  publish_table();
  // The members work with the table they had: the same servers in the same order make the same
  // table, so it keeps its version. A server started afresh moved: a newer one, and the workers
  // drop the work in hand (as after the loss of a server).
  const bool moved = servers_fresh_ > 0 || !live;
  table_->version = std::max<std::uint64_t>(1, rejoined_table_version_ + (moved ? 1 : 0));
  table_->restore = checkpoints_->newest_dir();
  // Reports that came before the takeover first: a shard reported is done, not held.
  int replayed = 0;
  if (live) {
    for (const Deferred& d : deferred_) {
      const Member* m = members_.find(d.worker);
      if (m == nullptr) continue;
      if (d.evaluation)
        record_evaluation(d.worker, d.shard.epoch, d.loss, d.accuracy, d.eval_samples);
      else
        record_shard(*m, d.shard, now);
      ++replayed;
    }
  }
  std::string held;
  if (live && !moved) {
    for (const auto& [worker, work] : held_) {
      if (!members_.find(worker) || !members_.find(worker)->alive) continue;
      const bool taken = book_->hold(worker, work.kind == HeldWork::evaluation, work.epoch, work.index, now);
      held += " " + worker + (work.kind == HeldWork::evaluation ? " evaluates epoch " : " trains epoch ") +
              std::to_string(work.epoch) +
              (work.kind == HeldWork::evaluation ? "" : " shard " + std::to_string(work.index)) +
              (taken ? ";" : " (already done);");
    }
  }
  deferred_.clear();
  SHOAL_LOG(log_, warn,
            "took the job over " << static_cast<long long>(1000 * seconds_between(started_, now)) << " ms after start: "
                                 << servers_kept_state_ << " server(s) kept their state, " << servers_fresh_
                                 << " started afresh; " << members_.count(wire::Role::WORKER, true) << " worker(s); "
                                 << (live ? "it goes on from the live position at step " + std::to_string(steps_) +
                                                (replayed ? " (" + std::to_string(replayed) +
                                                                " report(s) that came "
                                                                "first counted)"
                                                          : std::string())
                                          : std::string("no server kept the job's state: it goes on from ") +
                                                (restored_from_.empty() ? std::string("the start") : restored_from_))
                                 << (held.empty() ? std::string() : ";" + held));
  took_over_ = now;
  metrics_.write({{"event", std::string("takeover")},
                  {"live", static_cast<std::int64_t>(live)},
                  {"step", steps_},
                  {"seconds", seconds_between(started_, now)}});
}

void Coordinator::resume_from_checkpoint() {
  const std::string& mode = config_.checkpoint_resume;
  if (mode == "never") return;
  std::string dir;
  if (mode == "auto") {
    if (config_.checkpoint_dir.empty()) return;
    auto found = find_resumable(config_.checkpoint_dir, [&](const std::string& d, const std::string& why) {
      SHOAL_LOG(log_, warn, "not resuming from " << d << ": " << why);
    });
    if (!found) {
      SHOAL_LOG(log_, info, "no checkpoint in " << config_.checkpoint_dir << " yet: the job starts afresh");
      return;
    }
    dir = *found;
  } else {
    dir = mode;
    verify_checkpoint(dir);  // a named checkpoint must be intact: CheckpointError names the bad file
  }
  SHOAL_REQUIRE(read_whole_file(dir + "/" + checkpoint_file::kLayout) == layout_, CheckpointError,
                dir << " holds another model or data set: its layout file (model, input, classes, tensors) differs "
                       "from this job's model "
                    << config_.model << " on its data (shoal checkpoint inspect " << dir << ")");
  restored_position_ = read_whole_file(dir + "/" + checkpoint_file::kPosition);
  steps_ = position_step(restored_position_, dir + "/" + checkpoint_file::kPosition);
  checkpoints_->restored(steps_, dir);
  restored_from_ = dir;
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
  write_live_state();  // a coordinator restarted before every member heard it tells them
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
    t.steps_per_epoch =
        std::max<std::int64_t>(1, train_samples_ / (config_.batch_size * config_.accumulate * config_.workers));
    t.restore = restored_from_;
    table_ = t;
    auto book = std::make_unique<SyncBook>(train_samples_, config_.epochs, static_cast<int>(config_.workers));
    std::map<std::string, int> ranks;
    for (const auto* m : members_.members(wire::Role::WORKER, true)) ranks[m->id] = m->rank;
    world_.emplace(*book, std::move(ranks));
    book_ = std::move(book);
    if (!restored_from_.empty()) {
      for (const EpochReport& r : book_->restore(restored_position_, Clock::now()))
        result_.final_test_accuracy = r.test_accuracy;
      SHOAL_LOG(log_, info, "resuming from " << restored_from_ << " (step " << steps_ << ")");
    }
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
  std::int64_t batch = config_.batch_size * config_.accumulate * (config_.staleness == 0 ? config_.workers : 1);
  t.steps_per_epoch = std::max<std::int64_t>(1, (train_samples_ + batch - 1) / batch);
  table_ = t;
  book_ = std::make_unique<LeaseBook>(train_samples_, config_.shard_size, config_.epochs,
                                      seconds_to_duration(config_.lease_timeout_seconds));
  if (!restored_position_.empty()) {
    for (const EpochReport& r : book_->restore(restored_position_, Clock::now()))
      result_.final_test_accuracy = r.test_accuracy;
    table_->restore = restored_from_;
    if (!taken_over_ || servers_kept_state_ == 0)
      SHOAL_LOG(log_, info, "resuming from " << restored_from_ << " (step " << steps_ << ")");
  }
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
  if (in.kind() == K::REGISTER) return handle_register(in, now);
  const std::string sender = in.sender();
  const Member* member = members_.find(sender);
  // Heartbeats and lease requests carry the job's end in their own replies.
  if (end_ && member != nullptr && in.kind() != K::HEARTBEAT && in.kind() != K::LEASE_REQUEST)
    return reply_job_over(in);
  if (member == nullptr && taken_over_) {
    // A member of the job this coordinator took over: it registers again, then asks again.
    if (end_) return reply_job_over(in);
    reply_error(in, wire::ErrorCode::COORDINATOR_RESTARTED,
                "the coordinator was restarted while the job ran: register again (" + sender + ")");
    return;
  }
  if (member == nullptr || !member->alive) {
    socket_.reject("unknown sender", kind_name(in.kind()) + std::string(" from '") + sender + "'");
    reply_error(in, wire::ErrorCode::UNKNOWN_SENDER, sender + " is not a live member of this job");
    return;
  }
  members_.heard_from(sender, now);
  switch (in.kind()) {
    case K::HEARTBEAT:
      return handle_heartbeat(in);
    case K::TABLE_REQUEST:
      return handle_table_request(in);
    case K::LEASE_REQUEST:
      return handle_lease_request(in, *member, now);
    case K::LEASE_DONE:
      return handle_lease_done(in, *member, now);
    case K::LEAVE:
      return handle_leave(in, *member, now);
    case K::STORE_SET:
      return handle_store_set(in);
    case K::STORE_GET:
      return handle_store_get(in);
    case K::CHECKPOINT_FILES:
      return handle_checkpoint_files(in);
    case K::PREEMPT:
      return handle_preempt(in, now);
    case K::SYNC_CUT:
      return handle_sync_cut(in, *member);
    case K::EVAL_DONE:
      return handle_eval_done(in, now);
    default:
      socket_.reject("unexpected message kind", kind_name(in.kind()) + std::string(" from ") + sender);
      reply_error(in, wire::ErrorCode::BAD_REQUEST,
                  std::string("the coordinator does not handle ") + kind_name(in.kind()));
  }
}

void Coordinator::handle_register(const Incoming& in, Clock::time_point now) {
  auto body = in.envelope().getBody();
  const bool over = end_.has_value();
  auto reg = body.getRegister();
  // Retries of one process's registration carry its nonce: every copy gets the same answer,
  // so copies queued while the coordinator was not up do not register the process again.
  if (const Member* m = members_.registered_by(reg.getNonce())) return reply_register(in, *m);
  if (over) return reply_job_over(in);
  // A member started with other job-wide settings (a ConfigMap edited, and not every process
  // restarted) would train another job: refused, naming the first setting that differs.
  if (reg.hasSettings() && reg.getSettings().size() > 0 && reg.getSettingsDigest() != settings_digest_) {
    const std::string difference =
        first_setting_difference(reg.getSettings().cStr(), settings_text_, "at the coordinator");
    if (!difference.empty()) {
      SHOAL_LOG(log_, error, "refused " << in.sender() << ": its settings differ from the job's: " << difference);
      reply_error(in, wire::ErrorCode::SETTINGS_DIFFER,
                  "this process's settings differ from the job's (every process of a job must be started with the "
                  "same job file): " +
                      difference);
      return;
    }
  }
  if (!in.user.empty()) {
    // auth.keys: a member registers as the rank its key is, and as nothing else.
    const std::string claimed = std::string(role_name(reg.getRole())) + "." + std::to_string(reg.getRank());
    if (reg.getRank() < 0 || claimed != in.user) {
      SHOAL_LOG(log_, warn,
                "refused a registration as " << claimed << " over a connection with the key of " << in.user);
      reply_error(in, wire::ErrorCode::BAD_REQUEST, "the key of " + in.user + " cannot register as " + claimed);
      return;
    }
  }
  bool server = reg.getRole() == wire::Role::SERVER;
  if (table_) {
    // A running job: a restarted server takes its old place; an async worker may join at any
    // time (it starts at the slowest live clock).
    if (sync_) return sync_rank_joins(in, reg, now);
    if (!server && config_.staleness == 0) {
      reply_error(in, wire::ErrorCode::BAD_REQUEST,
                  "a synchronous parameter-server job (async.staleness = 0) takes no worker once started");
      return;
    }
    if (reg.getRank() >= 0) {
      // The same rank from a new process (its supervisor restarted it): the old process is
      // gone, whether or not its heartbeats have stopped long enough to say so.
      const std::string id = std::string(role_name(reg.getRole())) + "." + std::to_string(reg.getRank());
      if (const Member* old = members_.find(id); old != nullptr && old->alive) {
        SHOAL_LOG(log_, warn, id << " registered again from a new process: its old process is taken as dead");
        const auto last_seen = old->last_seen;
        members_.mark_dead(id);
        if (server) {
          server_lost(id, now);
        } else {
          int returned = book_ ? book_->release(id) : 0;
          SHOAL_LOG(log_, warn, id << "'s " << returned << " leased shard(s) back in the queue");
          recovering_ = Recovery{id, last_seen};
        }
      }
    }
    if (server) return server_returns(in, reg, now);
  } else {
    std::size_t have = members_.count(reg.getRole(), true),
                want = static_cast<std::size_t>(server ? servers_wanted_ : config_.workers);
    if (reg.getRole() == wire::Role::COORDINATOR || have >= want) {
      reply_error(in, wire::ErrorCode::BAD_REQUEST,
                  std::string("the job expects ") + std::to_string(want) + " " + (server ? "servers" : "workers"));
      return;
    }
  }
  try {
    const Member& m = members_.add(reg.getRole(), reg.getRank(), reg.getAddress().cStr(), now);
    members_.remember(reg.getNonce(), m.id);
    reply_register(in, m);
    if (taken_over_) {
      if (reg.getRejoin()) note_rejoin(reg, m.id);
      if (!reg.getRejoin() && server) ++servers_fresh_;
      if (reg.getRejoin() && book_ && held_.count(m.id)) {  // back after the takeover
        const HeldWork& work = held_[m.id];
        book_->hold(m.id, work.kind == HeldWork::evaluation, work.epoch, work.index, now);
      }
      SHOAL_LOG(log_, info,
                (reg.getRejoin() ? "registered again: " : "registered afresh: ")
                    << m.id << (m.address.empty() ? "" : " at " + m.address) << " ("
                    << members_.count(wire::Role::SERVER, true) << "/" << config_.servers << " servers, "
                    << members_.count(wire::Role::WORKER, true) << "/" << config_.workers << " workers)");
      return;
    }
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
}

void Coordinator::handle_heartbeat(const Incoming& in) {
  auto body = in.envelope().getBody();
  const std::string sender = in.sender();
  const bool over = end_.has_value();
  members_.set_clock(sender, body.getHeartbeat().getClock());
  Outgoing out("coordinator", in.request_id());
  auto r = out.body().initHeartbeatReply();
  r.setGeneration(members_.generation());
  r.setTableVersion(table_ ? table_->version : 0);
  auto live = members_.live_workers();
  auto list = r.initLiveWorkers(static_cast<unsigned>(live.size()));
  for (std::size_t i = 0; i < live.size(); ++i) list.set(static_cast<unsigned>(i), live[i]);
  if (over) {
    job_end_to_wire(*end_, r.initEnd());
    told_[sender] = true;
  }
  socket_.send(in.peer, out);
}

void Coordinator::handle_table_request(const Incoming& in) {
  const std::string sender = in.sender();
  if (!table_) {
    reply_error(in, wire::ErrorCode::NOT_READY, "the partition table is not published yet");
    return;
  }
  if (!missing_servers_.empty()) {
    reply_error(in, wire::ErrorCode::NOT_READY, "the job is paused until " + *missing_servers_.begin() + " is back");
    return;
  }
  table_->live_workers = members_.live_workers();
  // A worker joining now starts at the slowest live clock (as its heartbeats report it).
  table_->start_clock = UINT64_MAX;
  for (const auto& w : table_->live_workers)
    if (const Member* wm = members_.find(w); wm != nullptr && w != sender)
      table_->start_clock = std::min(table_->start_clock, wm->clock);
  if (table_->start_clock == UINT64_MAX) table_->start_clock = 0;
  if (world_ && world_->pending(sender)) {
    reply_error(in, wire::ErrorCode::NOT_READY,
                "the world admits " + sender + " once every rank trains the same epoch");
    return;
  }
  if (world_ && world_->reformed()) {
    // This rank's place in the re-formed world.
    auto place = world_->place(sender);
    if (!place) {
      reply_error(in, wire::ErrorCode::UNKNOWN_SENDER, sender + " is not part of the re-formed world");
      return;
    }
    table_->world_rank = place->rank;
    table_->world_size = place->size;
    table_->previous_ranks = place->previous_ranks;
  }
  Outgoing out("coordinator", in.request_id());
  table_->to_wire(out.body().initPartitionTable());
  socket_.send(in.peer, out);
}

void Coordinator::handle_lease_request(const Incoming& in, const Member& member, Clock::time_point now) {
  const std::string sender = in.sender();
  const bool over = end_.has_value();
  if (member.role == wire::Role::WORKER && !book_ && taken_over_ && !over) {
    Outgoing out("coordinator", in.request_id());
    out.body().initLeaseGrant().setWait(20);  // every member is not back yet
    socket_.send(in.peer, out);
    return;
  }
  if (member.role != wire::Role::WORKER || !book_) {
    reply_error(in, wire::ErrorCode::NOT_READY, "no leases before the job starts");
    return;
  }
  Outgoing out("coordinator", in.request_id());
  auto grant = out.body().initLeaseGrant();
  at_boundary_[sender] = true;  // its pushes are applied: it waited for its parameters first
  const CheckpointDriver::InProgress* checkpoint = checkpoints_->current();
  if (!over && sync_ && sync_checkpoint_holds(sender, now) &&
      !(checkpoint && !checkpoint->draining && checkpoint->buffers_holder.empty() && member.rank == 0)) {
    grant.setWait(20);  // every rank waits before the next epoch while a checkpoint is cut
    socket_.send(in.peer, out);
    return;
  }
  // A checkpoint that has cut the servers' state waits for one worker to write the batch-norm
  // buffers: asked before the wait below, which holds every worker while the job's last
  // checkpoint is cut (that wait came first, and a model with batch norm never had its last
  // checkpoint: it was abandoned after cluster.request_timeout_seconds).
  if (!over && checkpoints_->wants_buffers_holder()) {
    auto order = grant.initSaveBuffers();
    order.setStep(static_cast<std::uint64_t>(checkpoints_->current()->step));
    order.setDir(checkpoints_->current()->dir);
    checkpoints_->set_buffers_holder(sender);
    at_boundary_[sender] = false;
    socket_.send(in.peer, out);
    return;
  }
  if (!over && !sync_ && ((checkpoint && (checkpoint->draining || book_->finished())) || !missing_servers_.empty())) {
    grant.setWait(20);  // no new work while a checkpoint drains the job, or while it is paused
    socket_.send(in.peer, out);
    return;
  }
  LeaseBook::Task task;
  if (over) {
    task.kind = LeaseBook::Task::finished;
  } else {
    task = book_->next(sender, now);
    if (task.kind == LeaseBook::Task::finished) end_job(ExitCode::ok, "every epoch is done");
  }
  // An evaluation pushes nothing: a worker evaluating is at a step boundary for a checkpoint's
  // cut (which then records the epoch as not evaluated yet). A shard is not.
  if (task.kind == LeaseBook::Task::train || (sync_ && task.kind == LeaseBook::Task::evaluate))
    at_boundary_[sender] = false;
  // cluster.stall_seconds counts from here (or its last step): a worker that waited for the
  // job to assemble, or for work, was not stalled meanwhile.
  if (task.kind == LeaseBook::Task::train) members_.progressed(sender, now);
  // A new epoch opened: in the live position before its first shard is out, so that a coordinator
  // taking the job over knows the epoch that shard's report counts in.
  if (task.kind == LeaseBook::Task::train && task.shard.epoch > live_epoch_) {
    live_epoch_ = task.shard.epoch;
    write_live_state();
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
}

void Coordinator::handle_lease_done(const Incoming& in, const Member& member, Clock::time_point now) {
  auto d = in.envelope().getBody().getLeaseDone();
  members_.progressed(member.id, now);
  // A wait longer than the shard's time (or not a number) is a confused worker: not counted.
  const double wait = d.getDataWaitSeconds();
  ShardDone done{
      d.getEpoch(), d.getIndex(),
      ShardStats{static_cast<std::int64_t>(d.getSamples()), d.getLossSum(), static_cast<std::int64_t>(d.getCorrect()),
                 std::isfinite(wait) && wait >= 0 && wait <= d.getSeconds() ? wait : 0.0},
      d.getSeconds(), d.getResent()};
  if (book_)
    record_shard(member, done, now);
  else if (taken_over_)
    deferred_.push_back(Deferred{member.id, false, done, 0, 0, 0});  // counted at the takeover
  Outgoing out("coordinator", in.request_id());
  out.body().setAck();
  socket_.send(in.peer, out);
}

void Coordinator::record_shard(const Member& member, const ShardDone& done, Clock::time_point now) {
  const std::string& sender = member.id;
  const ShardStats& stats = done.stats;
  // A report sent again after a failover, of a shard the live state had as done: the first copy
  // was counted before the coordinator died (its acknowledgement was lost with it).
  if (done.resent && book_->shard_done(done.epoch, done.index)) return;
  // Global steps: a sync job's ranks train one step together (rank 0 counts them).
  const std::int64_t step_samples = config_.batch_size * config_.accumulate;
  if (!sync_ || member.rank == 0) steps_ += (stats.samples + step_samples - 1) / step_samples;
  if (took_over_) {
    const double seconds = seconds_between(started_, now);
    SHOAL_LOG(log_, info,
              "the job goes on under this coordinator: the first shard since the takeover completed "
                  << static_cast<long long>(1000 * seconds) << " ms after it started");
    metrics_.write({{"event", std::string("recovery")},
                    {"lost", std::string("coordinator")},
                    {"seconds", seconds},
                    {"elapsed", seconds}});
    took_over_.reset();
  }
  if (recovering_ && missing_servers_.empty()) {
    // The job goes on: a shard completed after the loss was handled.
    const double seconds = seconds_between(recovering_->lost_at, now);
    SHOAL_LOG(log_, info,
              "recovered from the loss of " << recovering_->who << " in " << seconds
                                            << " s (from its last sign of life to the next completed shard)");
    metrics_.write({{"event", std::string("recovery")},
                    {"lost", recovering_->who},
                    {"seconds", seconds},
                    {"elapsed", seconds_between(started_, now)}});
    recovering_.reset();
  }
  if (!book_->complete(sender, done.epoch, done.index, stats, done.seconds, now))
    SHOAL_LOG(log_, debug,
              sender << " finished epoch " << done.epoch << " shard " << done.index
                     << ", which was already done or is not in the book");
  else
    write_live_state();
}

void Coordinator::handle_leave(const Incoming& in, const Member& member, Clock::time_point now) {
  const std::string sender = in.sender();
  const bool over = end_.has_value();
  // A worker stopping early (SIGTERM): the same as its death, without the wait.
  if (member.role == wire::Role::WORKER) {
    members_.mark_dead(sender);
    worker_gone(sender, "left the job");
  } else if (member.role == wire::Role::SERVER && member.alive) {
    // A preempted server going (its state is in a checkpoint, or none could be taken).
    members_.mark_dead(sender);
    if (table_ && !over && !missing_servers_.count(sender)) server_gone(sender, "left (SIGTERM)", now);
  }
  told_[sender] = true;
  Outgoing out("coordinator", in.request_id());
  out.body().setAck();
  socket_.send(in.peer, out);
}

void Coordinator::handle_store_set(const Incoming& in) {
  auto e = in.envelope().getBody().getStoreSet();
  auto v = e.getValue();
  if (!store_.set(e.getKey().cStr(), std::string(reinterpret_cast<const char*>(v.begin()), v.size()))) {
    reply_error(in, wire::ErrorCode::BAD_REQUEST, "the rendezvous store is full");
    return;
  }
  Outgoing out("coordinator", in.request_id());
  out.body().setAck();
  socket_.send(in.peer, out);
}

void Coordinator::handle_store_get(const Incoming& in) {
  const std::string* value = store_.get(in.envelope().getBody().getStoreGet().cStr());
  if (value == nullptr) {
    reply_error(in, wire::ErrorCode::NOT_READY, "no such key yet");
    return;
  }
  Outgoing out("coordinator", in.request_id());
  out.body().setStoreValue(kj::arrayPtr(reinterpret_cast<const capnp::byte*>(value->data()), value->size()));
  socket_.send(in.peer, out);
}

void Coordinator::handle_eval_done(const Incoming& in, Clock::time_point now) {
  const std::string sender = in.sender();
  members_.progressed(sender, now);
  auto d = in.envelope().getBody().getEvalDone();
  if (book_)
    record_evaluation(sender, d.getEpoch(), d.getLoss(), d.getAccuracy(), static_cast<std::int64_t>(d.getSamples()));
  else if (taken_over_)
    deferred_.push_back(Deferred{sender, true, ShardDone{d.getEpoch(), 0, {}, 0}, d.getLoss(), d.getAccuracy(),
                                 static_cast<std::int64_t>(d.getSamples())});
  Outgoing out("coordinator", in.request_id());
  out.body().setAck();
  socket_.send(in.peer, out);
}

void Coordinator::record_evaluation(const std::string& worker, std::int64_t epoch, double loss, double accuracy,
                                    std::int64_t samples) {
  // Elastic sync: a rank whose world had already evaluated this epoch (it joined after, or
  // its own evaluation was cut short by the change) passes it with no samples: its stage
  // moves on, the epoch's result stays the one the world computed.
  if (sync_ && samples == 0)
    book_->pass_evaluation(worker, epoch);
  else if (book_->evaluated(worker, epoch, loss, accuracy))
    write_live_state();
}

void Coordinator::worker_gone(const std::string& id, const std::string& how) {
  const Member* m = members_.find(id);
  WorkerLoss loss;
  loss.rank = m != nullptr ? m->rank : -1;
  loss.how = how;
  loss.who = id + " (rank " + std::to_string(loss.rank) + ")";
  loss.started = table_.has_value();
  loss.finished = book_ == nullptr || book_->finished();
  loss.live_workers = members_.live_workers().size();
  if (world_) {
    loss.pending_joiner = world_->drop_pending(id);
    loss.in_world = world_->contains(id);
  }
  if (sync_) SHOAL_LOG(log_, error, loss.who << " " << how);
  const FailureDecision decision = failure_.worker_lost(loss);
  switch (decision.action) {
    case FailureDecision::Action::reform:
      return reform_world(id);
    case FailureDecision::Action::end_job:
      return end_job(ExitCode::peer_lost, decision.reason);
    case FailureDecision::Action::release: {
      checkpoints_->worker_gone(id);  // if it was to write the buffers: ask another
      int returned = book_ ? book_->release(id) : 0;
      SHOAL_LOG(log_, warn,
                id << " " << how << "; " << returned << " leased shard(s) back in the queue; " << loss.live_workers
                   << " workers remain");
      if (!decision.reason.empty()) end_job(ExitCode::peer_lost, decision.reason);
      return;
    }
    case FailureDecision::Action::none:
    case FailureDecision::Action::pause:
      return;
  }
}

void Coordinator::sync_rank_joins(const Incoming& in, wire::Register::Reader reg, Clock::time_point now) {
  // A rank may join a running sync job only when it is elastic, and only in the place of a
  // missing rank (the world never grows past cluster.workers): a supervisor restarted a lost
  // rank, or a new process takes its place (rank -1: the lowest missing one).
  std::string refused;
  const int rank = reg.getRank();
  const std::string id = "worker." + std::to_string(rank);
  const Member* old = rank >= 0 ? members_.find(id) : nullptr;
  if (!config_.sync_elastic)
    refused = "the sync job has started and sync.elastic is off: a rank cannot join it";
  else if (reg.getRole() != wire::Role::WORKER)
    refused = "a sync job has no parameter servers";
  else if (rank == 0)
    refused = "rank 0 hosts the coordinator of this sync job: it cannot join it again";
  else if (rank >= config_.workers)
    refused = "rank " + std::to_string(rank) + " is outside the job's " + std::to_string(config_.workers) +
              " ranks (cluster.workers)";
  else if (book_ && book_->finished())
    refused = "the job has finished";
  else if (old == nullptr || !old->alive) {
    if (static_cast<std::int64_t>(world_->size()) >= config_.workers)
      refused = "the sync world has all its " + std::to_string(config_.workers) + " ranks (cluster.workers)";
  }
  if (!refused.empty()) {
    reply_error(in, wire::ErrorCode::BAD_REQUEST, refused);
    return;
  }
  if (old != nullptr && old->alive) {
    // Its supervisor restarted it: the old process is gone, whether or not its heartbeats have
    // stopped long enough to say so. The world shrinks, then grows again with the new process.
    SHOAL_LOG(log_, warn, id << " registered again from a new process: its old process is taken as dead");
    members_.mark_dead(id);
    worker_gone(id, "was replaced by a new process");
    if (end_) return reply_job_over(in);
  }
  try {
    const Member& m = members_.add(wire::Role::WORKER, rank, "", now);
    members_.remember(reg.getNonce(), m.id);
    reply_register(in, m);
    world_->add_pending(m.id);
    SHOAL_LOG(log_, info,
              "registered " << m.id << " as rank " << m.rank
                            << ": it joins the running world once every rank trains the same epoch");
    admit_joiners();
  } catch (const ProtocolError& e) {
    reply_error(in, wire::ErrorCode::BAD_REQUEST, e.what());
  }
}

void Coordinator::admit_joiners() {
  // Admitted while every rank trains the same epoch (none has reported it yet): the members then
  // agree on the state at a step of that epoch, and every one of them, the joiner included, goes
  // on to train its rest and evaluate it. Between epochs (an evaluation in progress) the joiner
  // waits: a rank past an evaluation the others would still run would wait in another collective.
  if (!world_ || end_ || checkpoints_->current() || !world_->can_admit()) return;
  world_->admit_pending([this](const std::string& id) { return is_alive(id); },
                        [this](const std::string& id) { announce_world("", id); });
}

void Coordinator::reform_world(const std::string& lost) {
  if (checkpoints_->current()) abandon_checkpoint(lost + " was lost");
  world_->remove(lost, Clock::now(), [this](const std::string& id) { return is_alive(id); });
  announce_world(lost, "");
}

bool Coordinator::is_alive(const std::string& id) const {
  const Member* m = members_.find(id);
  return m != nullptr && m->alive;
}

void Coordinator::announce_world(const std::string& lost, const std::string& joined) {
  const auto now = Clock::now();
  const int size = static_cast<int>(world_->size());
  // A new generation: every member sees it in its heartbeat replies, ends the collective it is
  // in, fetches its place in the new world (tableRequest) and forms it under this key prefix.
  table_->version = std::max<std::uint64_t>(table_->version, members_.generation()) + 1;
  if (joined.empty())
    SHOAL_LOG(log_, warn,
              "the sync world re-forms in place without " << lost << ": " << size << " ranks, generation "
                                                          << table_->version
                                                          << "; the survivors take the state from the most advanced "
                                                             "rank and re-plan the rest of the epoch");
  else
    SHOAL_LOG(log_, info,
              "the sync world re-forms in place with " << joined << ": " << size << " ranks, generation "
                                                       << table_->version
                                                       << "; it takes the state from the most advanced rank at the "
                                                          "next step boundary");
  metrics_.write({{"event", std::string("world")},
                  {"ranks", static_cast<std::int64_t>(size)},
                  {"generation", static_cast<std::int64_t>(table_->version)},
                  {joined.empty() ? "lost" : "joined", joined.empty() ? lost : joined},
                  {"elapsed", seconds_between(started_, now)}});
}

bool Coordinator::checkpoint_due() const {
  return book_ && !end_ && missing_servers_.empty() && checkpoints_->due(steps_);
}

void Coordinator::abandon_checkpoint(const std::string& why) {
  checkpoints_->abandon(why);
  after_checkpoint_ended();
}

void Coordinator::after_checkpoint_ended() {
  if (!terminating_ || end_ || checkpoints_->current()) return;
  preempted_ = true;
  const CheckpointDriver::Outcome& o = checkpoints_->last_outcome();
  end_job(ExitCode::ok, "stopped on SIGTERM at step " + std::to_string(stop_step_ >= 0 ? stop_step_ : steps_) +
                            (!checkpoints_->enabled() ? std::string(" (no checkpoint.dir: nothing kept)")
                             : o.written              ? " after checkpoint " + o.what
                                                      : "; the last checkpoint could not be written (" + o.what + ")"));
}

void Coordinator::order_snapshot(const std::string& server, std::int64_t step, const std::string& dir) {
  // Short waits: the coordinator answers nobody while it waits here, and all of them together
  // must stay well under a liveness period (a dying server makes one of them run out).
  Seconds wait(std::min({config_.request_timeout_seconds, 0.5,
                         config_.dead_after_seconds / (4.0 * static_cast<double>(table_->servers.size()))}));
  std::string address;
  for (const auto& s : table_->servers)
    if (s.id == server) address = s.address;
  auto& client = server_clients_[address];
  if (!client) client = std::make_unique<ControlClient>(network_, address, "coordinator", log_, wait);
  try {
    client->order_snapshot(step, dir);
  } catch (const Error&) {
    client.reset();  // a fresh connection next time
    throw;
  }
}

void Coordinator::snapshot_servers(Clock::time_point now) {
  std::vector<std::string> servers;
  for (const auto& s : table_->servers) servers.push_back(s.id);
  if (!checkpoints_->cut(steps_, book_->save(), servers, this, has_buffers_)) return after_checkpoint_ended();
  // Servers preempted (SIGTERM): nothing more may reach them after this cut. The job pauses
  // here; each goes once its files are in, and its replacement restores from this checkpoint.
  for (const auto& id : preempting_) {
    preempted_servers_.insert(id);
    server_lost(id, now, /*keep_checkpoint=*/true);
  }
  preempting_.clear();
}

void Coordinator::handle_checkpoint_files(const Incoming& in) {
  auto f = in.envelope().getBody().getCheckpointFiles();
  const Member* member = members_.find(in.sender());
  const std::string who = member->role == wire::Role::SERVER ? member->id : "buffers";
  std::vector<FileEntry> files;
  for (auto file : f.getFiles()) files.push_back(FileEntry{file.getName().cStr(), file.getSize(), file.getCrc()});
  const std::string refused = checkpoints_->files_reported(who, static_cast<std::int64_t>(f.getStep()),
                                                           std::move(files), f.getCopySeconds(), f.getWriteSeconds());
  if (!refused.empty()) return reply_error(in, wire::ErrorCode::BAD_REQUEST, refused);
  Outgoing out("coordinator", in.request_id());
  out.body().setAck();
  socket_.send(in.peer, out);
}

void Coordinator::drive_checkpoint(Clock::time_point now) {
  if (term_ != nullptr && term_->load() && !terminating_ && !end_) {
    terminating_ = true;
    const bool checkpoints = !sync_ && checkpoints_->enabled() && book_ != nullptr;  // sync: not yet
    SHOAL_LOG(log_, warn, "SIGTERM: stopping the job at a step boundary");
    if (checkpoints && checkpoints_->stale_for_term() && steps_ != checkpoints_->newest_step() &&
        !checkpoints_->current())
      checkpoints_->begin(steps_);
    if (!checkpoints_->current()) {
      preempted_ = true;
      end_job(ExitCode::ok, "stopped on SIGTERM at step " + std::to_string(steps_) +
                                (checkpoints ? " (the newest checkpoint is recent enough)" : " (no checkpoints)"));
      return;
    }
  }
  if (!checkpoints_->current()) {
    // Sync jobs decide at an epoch's start (sync_checkpoint_holds), not here.
    const bool for_preemption =
        !preempting_.empty() && missing_servers_.empty() && !end_ && checkpoints_->retry_wait_over();
    if (!sync_ && (checkpoint_due() || for_preemption)) checkpoints_->begin(steps_);
    if (!checkpoints_->current()) return;
  }
  const CheckpointDriver::InProgress& c = *checkpoints_->current();
  if (c.draining) {
    // Async: every shard leased is reported and every worker asked again (its pushes are
    // applied). Sync: every rank asked to train the next epoch; rank 0 writes the whole state
    // (every rank holds the same), the others wait.
    bool drained = sync_ ? world_->book().boundary() == c.sync_epoch : book_->outstanding_shards() == 0;
    for (const auto& w : members_.live_workers())
      if (!at_boundary_[w]) drained = false;
    if (drained && sync_) {
      if (!checkpoints_->cut(steps_, book_->save(), {}, nullptr, /*buffers=*/true)) after_checkpoint_ended();
    } else if (drained) {
      snapshot_servers(now);
    } else if (checkpoints_->drain_overdue()) {
      abandon_checkpoint(sync_ ? "the ranks did not reach the epoch boundary within cluster.request_timeout_seconds"
                               : "the job did not drain within cluster.request_timeout_seconds");
    }
    return;
  }
  if (checkpoints_->poll()) after_checkpoint_ended();
}

bool Coordinator::sync_checkpoint_holds(const std::string& worker, Clock::time_point /*now*/) {
  const std::int64_t next = world_->book().next_train_epoch(worker);
  if (next < 0) return false;  // its next task is an evaluation: never held
  // The first rank to ask for epoch `next` decides for every rank: a checkpoint after epoch
  // next - 1, or none (a rank already training `next` must not find its peers held).
  if (next > decided_epoch_ && !checkpoints_->current()) {
    decided_epoch_ = next;
    // After the last epoch: the trained model, unless the newest checkpoint already holds it.
    const bool last = next == config_.epochs + 1 && checkpoints_->enabled() && steps_ != checkpoints_->newest_step();
    if (next > 1 && (checkpoint_due() || last)) checkpoints_->begin(steps_, next - 1);
  }
  const CheckpointDriver::InProgress* c = checkpoints_->current();
  return c != nullptr && c->sync_epoch == next - 1;
}

void Coordinator::handle_sync_cut(const Incoming& in, const Member& member) {
  auto cut = in.envelope().getBody().getSyncCut();
  if (!sync_ || !world_ || member.role != wire::Role::WORKER || member.rank != 0) {
    reply_error(in, wire::ErrorCode::BAD_REQUEST, "only rank 0 of a sync job cuts a checkpoint mid-epoch");
    return;
  }
  const auto step = static_cast<std::int64_t>(cut.getStep());
  const auto epoch = static_cast<std::int64_t>(cut.getEpoch());
  const auto position = static_cast<std::int64_t>(cut.getPosition());
  if (epoch < 1 || epoch > config_.epochs || position < 0 || position > train_samples_) {
    reply_error(
        in, wire::ErrorCode::BAD_REQUEST,
        "a cut at epoch " + std::to_string(epoch) + ", position " + std::to_string(position) + " is outside the job");
    return;
  }
  if (cut.getStop() && !terminating_) {
    terminating_ = true;
    stop_step_ = step;  // after_checkpoint_ended ends the job (exit 0) once the cut is written
    SHOAL_LOG(log_, warn,
              "a rank was asked to stop (SIGTERM): the world agreed to stop after step "
                  << step << " (epoch " << epoch << ", " << position << " samples in)"
                  << (checkpoints_->enabled() ? "; checkpointing it" : "; no checkpoint.dir, so nothing is kept"));
  }
  Outgoing out("coordinator", in.request_id());
  auto grant = out.body().initLeaseGrant();
  if (checkpoints_->enabled() && !checkpoints_->current()) {
    checkpoints_->begin(step);
    const std::string body = world_->book().save_within(epoch, position, static_cast<std::int64_t>(cut.getSamples()),
                                                        cut.getLossSum(), static_cast<std::int64_t>(cut.getCorrect()));
    if (checkpoints_->cut(step, body, {}, nullptr, /*buffers=*/true)) {
      checkpoints_->set_buffers_holder(in.sender());
      auto order = grant.initSaveBuffers();
      order.setStep(static_cast<std::uint64_t>(step));
      order.setDir(checkpoints_->current()->dir);
      socket_.send(in.peer, out);
      return;
    }
  }
  // None taken: checkpoints off, the newest already holds this step, or one is being completed
  // (a stop then ends the job when it is).
  grant.setWait(0);
  socket_.send(in.peer, out);
  after_checkpoint_ended();
}

void Coordinator::server_gone(const std::string& id, const std::string& how, Clock::time_point now) {
  const FailureDecision decision = failure_.server_lost(id, how);
  if (decision.action == FailureDecision::Action::end_job) return end_job(ExitCode::peer_lost, decision.reason);
  server_lost(id, now);
}

void Coordinator::server_lost(const std::string& id, Clock::time_point now, bool keep_checkpoint) {
  if (missing_servers_.empty()) paused_since_ = now;
  missing_servers_.insert(id);
  if (const Member* m = members_.find(id)) recovering_ = Recovery{id, m->last_seen};
  ++table_->version;  // workers drop their connections and wait for the new table
  for (const auto& range : table_->servers)
    if (range.id == id) server_clients_.erase(range.address);  // its successor gets a fresh connection
  // A checkpoint survives the loss of a server whose files are already in.
  const CheckpointDriver::InProgress* checkpoint = checkpoints_->current();
  if (checkpoint && !keep_checkpoint && (checkpoint->draining || checkpoint->waiting.count(id)))
    abandon_checkpoint(id + " was lost");
  int released = book_ ? book_->release_all() : 0;
  if (keep_checkpoint) {
    SHOAL_LOG(log_, warn,
              "parameter server " << id << " is preempted (SIGTERM): the job pauses at the cut of checkpoint "
                                  << checkpoints_->current()->name << " until it is back, and it restores from there; "
                                  << released << " leased shard(s) back in the queue");
    return;
  }
  SHOAL_LOG(log_, error,
            "parameter server " << id << " stopped answering heartbeats; the job pauses until it is back (shoal launch "
                                << "restarts it; under Kubernetes its pod is restarted) and it restores its shard from "
                                << (checkpoints_->newest_dir().empty()
                                        ? std::string("the initial parameters (no checkpoint yet: the work of its "
                                                      "shard so far is lost)")
                                        : checkpoints_->newest_dir())
                                << "; " << released << " leased shard(s) back in the queue");
}

void Coordinator::handle_preempt(const Incoming& in, Clock::time_point now) {
  const std::string& id = in.sender();
  const Member* m = members_.find(id);
  if (m == nullptr || m->role != wire::Role::SERVER) {
    reply_error(in, wire::ErrorCode::BAD_REQUEST, "only a parameter server is preempted this way (a worker leaves)");
    return;
  }
  auto answer = [&](bool wait, const std::string& reason) {
    Outgoing out("coordinator", in.request_id());
    auto r = out.body().initPreemptReply();
    r.setWait(wait);
    r.setReason(reason);
    socket_.send(in.peer, out);
  };
  const CheckpointDriver::InProgress* checkpoint = checkpoints_->current();
  const std::string& newest = checkpoints_->newest_dir();
  if (preempted_servers_.count(id)) {
    if (checkpoint && checkpoint->waiting.count(id))
      return answer(true, "its files of checkpoint " + checkpoint->name + " are not in yet");
    return answer(false, checkpoint       ? "its state is in checkpoint " + checkpoint->name + " (being completed)"
                         : newest.empty() ? std::string("the checkpoint of its state was abandoned")
                                          : "its state is in " + newest);
  }
  if (preempting_.count(id)) return answer(true, "waiting for the checkpoint's cut");
  const bool old = checkpoints_->stale_for_term();
  std::string go;
  if (config_.checkpoint_dir.empty())
    go = "no checkpoint.dir: its replacement starts from the initial parameters (the work on its shard is lost)";
  else if (end_)
    go = "the job is over";
  else if (sync_ || config_.staleness == 0 || !book_)
    go = "a synchronous parameter-server job ends without it";
  else if (!missing_servers_.empty())
    go = "the job is already paused (" + *missing_servers_.begin() + " is missing); its replacement restores from " +
         (newest.empty() ? std::string("the initial parameters") : newest);
  else if (!checkpoint && (!old || steps_ == checkpoints_->newest_step()))
    go = "the newest checkpoint (" + newest + ") is recent enough (checkpoint.on_term_older_than)";
  if (!go.empty()) {
    SHOAL_LOG(log_, warn, id << " got SIGTERM and goes without a checkpoint: " << go);
    return answer(false, go);
  }
  preempting_.insert(id);
  // A checkpoint already past its cut does not hold what the server applied since: the next one.
  if (!checkpoint) checkpoints_->begin(steps_);
  SHOAL_LOG(log_, warn,
            id << " got SIGTERM: it stays until a checkpoint holds its state, and the job pauses at that cut until "
                  "it is back");
  return answer(true, "a checkpoint is being cut");
}

void Coordinator::server_returns(const Incoming& in, wire::Register::Reader reg, Clock::time_point now) {
  std::size_t index = table_->servers.size();
  for (std::size_t i = 0; i < table_->servers.size(); ++i) {
    const std::string& id = table_->servers[i].id;
    if (missing_servers_.count(id) && (reg.getRank() < 0 || id == "ps." + std::to_string(reg.getRank()))) index = i;
  }
  if (index == table_->servers.size()) {
    reply_error(in, wire::ErrorCode::BAD_REQUEST,
                "the job has its " + std::to_string(table_->servers.size()) + " servers and none of them is missing" +
                    (reg.getRank() >= 0 ? " (ps." + std::to_string(reg.getRank()) + " is alive)" : ""));
    return;
  }
  if (const auto* checkpoint = checkpoints_->current(); checkpoint && !checkpoint->draining) {
    // It restores from the newest complete checkpoint: let the one being written complete first
    // (the state of a preempted server is in it).
    reply_error(in, wire::ErrorCode::NOT_READY, "checkpoint " + checkpoint->name + " is being written");
    return;
  }
  const std::string& newest = checkpoints_->newest_dir();
  ServerRange& range = table_->servers[index];
  preempted_servers_.erase(range.id);
  const int rank = std::stoi(range.id.substr(3));
  const Member& m = members_.add(wire::Role::SERVER, rank, reg.getAddress().cStr(), now);
  members_.remember(reg.getNonce(), m.id);
  range.address = m.address;
  table_->restore = newest;
  ++table_->version;
  missing_servers_.erase(m.id);
  reply_register(in, m);
  SHOAL_LOG(log_, info,
            m.id << " is back at " << m.address << " after "
                 << static_cast<long long>(1000 * seconds_between(paused_since_, now)) << " ms; it restores from "
                 << (newest.empty() ? std::string("the initial parameters") : newest)
                 << (missing_servers_.empty() ? "; the job goes on" : "; still missing: " + *missing_servers_.begin()));
}

void Coordinator::check_stalls(Clock::time_point now) {
  if (sync_ || config_.stall_seconds <= 0 || !table_ || end_ || !book_) return;
  if (!missing_servers_.empty() || checkpoints_->current()) {
    // Nobody can progress while the job is paused or drains: the clocks start again after.
    for (const auto& w : members_.live_workers()) members_.progressed(w, now);
    return;
  }
  const auto live = members_.live_workers();
  for (const auto& w : live) {
    const Member* m = members_.find(w);
    if (at_boundary_[w] || now - m->progressed <= seconds_to_duration(config_.stall_seconds)) continue;
    // Only the one that holds the others back: a worker waiting for a slower one (staleness)
    // makes no progress either, through no fault of its own.
    bool slowest = true;
    for (const auto& other : live)
      if (other != w && members_.find(other)->clock < m->clock) slowest = false;
    if (!slowest) continue;
    std::ostringstream how;
    how << "stalled: holds work but finished no step for " << config_.stall_seconds
        << " s while its heartbeats went on (cluster.stall_seconds); treated as dead";
    recovering_ = Recovery{w, m->progressed};
    members_.mark_dead(w);
    worker_gone(w, how.str());
    // The others were held back by it: their clocks start moving again from now.
    for (const auto& other : members_.live_workers()) members_.progressed(other, now);
    return;
  }
}

void Coordinator::check_liveness(Clock::time_point now) {
  // Once the job is over, processes that heard it exit: their silence is not a death.
  if (end_) return;
  for (const auto& id : members_.expire(now)) {
    const Member* m = members_.find(id);
    if (m->role == wire::Role::WORKER) {
      recovering_ = Recovery{id, m->last_seen};
      std::ostringstream how;
      how << "declared dead (no heartbeat for " << config_.dead_after_seconds << " s)";
      worker_gone(id, how.str());
    } else if (m->role == wire::Role::SERVER && table_) {
      server_gone(id, "stopped answering heartbeats", now);
    }
  }
  check_stalls(now);
  if (!missing_servers_.empty() && now - paused_since_ > seconds_to_duration(config_.startup_timeout_seconds) && !end_)
    end_job(ExitCode::peer_lost, "parameter server " + *missing_servers_.begin() +
                                     " was lost and did not come back within cluster.startup_timeout_seconds");
  if (book_) {
    int expired = book_->expire(now);
    if (expired > 0) SHOAL_LOG(log_, warn, expired << " shard lease(s) expired and went back to the queue");
  }
}

void Coordinator::update_telemetry(Clock::time_point now) {
  if (telemetry_ == nullptr) return;
  MetricsRegistry& m = telemetry_->metrics;
  if (table_) telemetry_->ready = true;  // the job assembled
  const char* live = "live members of the job, by role";
  m.gauge("shoal_coordinator_members", live, {{"role", "ps"}})
      .set(static_cast<double>(members_.count(wire::Role::SERVER, true)));
  m.gauge("shoal_coordinator_members", live, {{"role", "worker"}})
      .set(static_cast<double>(members_.count(wire::Role::WORKER, true)));
  m.gauge("shoal_coordinator_generation",
          "version of the partition table (sync: of the world): grows with every membership change")
      .set(table_ ? static_cast<double>(table_->version) : 0.0);
  m.gauge("shoal_coordinator_steps", "global steps: batches the workers reported").set(static_cast<double>(steps_));
  m.gauge("shoal_coordinator_paused", "1 while the job waits for a lost parameter server to return")
      .set(missing_servers_.empty() ? 0.0 : 1.0);
  if (checkpoints_->newest_step() >= 0) {  // absent until there is a checkpoint
    m.gauge("shoal_checkpoint_age_seconds", "seconds since the newest complete checkpoint was cut")
        .set(seconds_between(checkpoints_->newest_time(), now));
    m.gauge("shoal_checkpoint_step", "global step of the newest complete checkpoint")
        .set(static_cast<double>(checkpoints_->newest_step()));
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
    const double wait_share = r.step_seconds > 0 ? r.data_wait_seconds / r.step_seconds : 0;
    char line[440];
    std::snprintf(line, sizeof(line),
                  "epoch %lld/%lld  train loss %.4f acc %.2f%%  |  test loss %.4f acc %.2f%%  |  %.0f samples/s, data "
                  "wait %.1f%%  |  %lld/%lld samples done, %lld processed, %lld shard(s) re-leased",
                  static_cast<long long>(r.epoch), static_cast<long long>(config_.epochs), train_loss, 100 * train_acc,
                  r.test_loss, 100 * r.test_accuracy, rate, 100 * wait_share, static_cast<long long>(r.samples_done),
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
                    {"data_wait_seconds", r.data_wait_seconds},
                    {"data_wait_share", wait_share},
                    {"elapsed", seconds_between(started_, now)}});
    if (telemetry_ != nullptr) {
      MetricsRegistry& m = telemetry_->metrics;
      m.gauge("shoal_coordinator_epoch", "the last completed epoch").set(static_cast<double>(r.epoch));
      m.gauge("shoal_coordinator_train_loss", "mean training loss of the last completed epoch").set(train_loss);
      m.gauge("shoal_coordinator_test_loss", "test loss after the last completed epoch").set(r.test_loss);
      m.gauge("shoal_coordinator_test_accuracy", "test accuracy (0 to 1) after the last completed epoch")
          .set(r.test_accuracy);
      m.gauge("shoal_coordinator_samples_per_second", "training throughput of the last completed epoch").set(rate);
    }
    result_.epochs.push_back(r);
    result_.final_test_accuracy = r.test_accuracy;
  }
}

CoordinatorResult Coordinator::run() {
  started_ = Clock::now();
  checkpoints_->start();
  auto startup_deadline = started_ + seconds_to_duration(config_.startup_timeout_seconds);
  std::optional<Clock::time_point> end_deadline, told_at;
  while (true) {
    auto in = socket_.receive(std::chrono::milliseconds(20));
    SHOAL_REQUIRE(!vanish_, InternalError, "the coordinator vanished (a test's kill -9)");
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
      const bool assembled =
          taken_over_ ? takeover_assembled(now)
                      : members_.count(wire::Role::SERVER, true) == static_cast<std::size_t>(servers_wanted_) &&
                            members_.count(wire::Role::WORKER, true) == static_cast<std::size_t>(config_.workers);
      if (assembled) {
        if (taken_over_)
          take_over(now);
        else
          publish_table();
        write_live_state();
        metrics_.write({{"event", std::string("start")},
                        {"model", config_.model},
                        {"parameters", model_elements_},
                        {"train_samples", train_samples_},
                        {"strategy", std::string(strategy_name(config_.strategy))},
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
    update_telemetry(now);
    if (sync_) admit_joiners();
    if (!end_) drive_checkpoint(now);
    if (book_ && book_->finished() && !end_) {
      // The trained model is the last checkpoint: taken before the job ends (sync jobs decide
      // it when their ranks ask for work after the last epoch).
      if (!sync_ && checkpoints_->enabled() && !final_checkpoint_ && !checkpoints_->current() &&
          steps_ != checkpoints_->newest_step()) {
        final_checkpoint_ = true;
        checkpoints_->begin(steps_);
      }
      const bool sync_last_pending =
          sync_ && checkpoints_->enabled() && decided_epoch_ <= config_.epochs && steps_ != checkpoints_->newest_step();
      if (!checkpoints_->current() && !sync_last_pending) end_job(ExitCode::ok, "every epoch is done");
    }
    if (!end_) continue;
    // Every member hears how the job ended (in its next heartbeat, lease or table request);
    // one that never asks again is not waited for past two liveness periods.
    if (!end_deadline)
      end_deadline = now + 2 * seconds_to_duration(config_.dead_after_seconds + config_.heartbeat_seconds);
    // "Told" means the reply was sent, not that it arrived: keep answering for two more
    // heartbeat periods, so a reply still on its way is delivered and a process whose
    // heartbeat crossed ours hears the job's end, instead of finding the coordinator gone.
    if (everyone_told() && !told_at) told_at = now;
    if ((told_at && now > *told_at + 2 * seconds_to_duration(config_.heartbeat_seconds)) || now > *end_deadline) break;
  }
  // Every member was told the job is over: nothing to take over any more.
  if (!live_state_path_.empty()) {
    std::error_code ec;
    std::filesystem::remove(live_state_path_, ec);
  }
  if (end_->code != ExitCode::ok) throw Error(end_->reason, end_->code);
  double total = seconds_between(started_, Clock::now());
  if (ended_before_restart_)
    std::printf("the job had ended before this coordinator was restarted: %s\n", end_->reason.c_str());
  else if (preempted_)
    std::printf("stopped: %s; run the same command again to resume (checkpoint.resume = auto)\n", end_->reason.c_str());
  else if (sync_)
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
