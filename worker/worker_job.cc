#include "worker/worker_job.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <thread>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "checkpoint/state_io.h"
#include "collective/mpi/collective_mpi.h"
#include "compute/devices/device_select.h"
#include "compute/devices/devices.h"
#include "compute/rng.h"
#include "coordinator/client/control_client.h"
#include "data/dataset.h"
#include "models/model_file.h"
#include "worker/async_ps.h"
#include "worker/sync_allreduce.h"
#include "worker/sync_world.h"
#include "worker/trainer.h"

namespace shoal {

namespace {

// What the job loop works with, whatever the strategy.
struct JobContext {
  const JobConfig& config;
  Logger& log;
  const std::atomic<bool>* stop;
  ControlClient& control;
  Heartbeat& heartbeat;
  DistributedStrategy& strategy;
  Trainer& trainer;
  const DataSources& data;
  Backend* backend = nullptr;  // async: for the batch-norm buffers of a checkpoint
  Model* model = nullptr;
  // Async: the coordinator published a new partition table (a server was restarted): take it.
  // Returns false when stopped while waiting for it.
  std::function<bool()> take_new_table;
  Telemetry* telemetry = nullptr;
};

// What the job loop tells the status endpoint.
class WorkerTelemetry {
 public:
  explicit WorkerTelemetry(MetricsRegistry& m)
      : step_(m.gauge("shoal_worker_step", "steps this worker took part in (its clock)")),
        epoch_(m.gauge("shoal_worker_epoch", "epoch of the shard trained last")),
        samples_(m.counter("shoal_worker_samples_total", "training samples this worker trained")),
        shards_(m.counter("shoal_worker_shards_total", "data shards this worker trained and reported")),
        rate_(m.gauge("shoal_worker_samples_per_second", "training throughput of the shard trained last")),
        loss_(m.gauge("shoal_worker_loss", "mean training loss of the shard trained last")),
        train_seconds_(m.counter("shoal_worker_train_seconds_total", "seconds this worker spent training shards")),
        data_wait_(m.counter("shoal_worker_data_wait_seconds_total",
                             "of shoal_worker_train_seconds_total, seconds waiting for the input pipeline")) {}

  void shard_done(std::int64_t epoch, std::uint64_t step, const LossStats& s, double seconds, double data_wait) {
    train_seconds_.add(std::max(0.0, seconds));
    data_wait_.add(std::max(0.0, data_wait));
    step_.set(static_cast<double>(step));
    epoch_.set(static_cast<double>(epoch));
    samples_.add(static_cast<double>(s.count));
    shards_.add();
    if (seconds > 0) rate_.set(static_cast<double>(s.count) / seconds);
    if (s.count > 0) loss_.set(s.loss_sum / static_cast<double>(s.count));
  }

 private:
  Gauge &step_, &epoch_;
  Counter &samples_, &shards_;
  Gauge &rate_, &loss_;
  Counter &train_seconds_, &data_wait_;
};

// Thrown by a wait when the job is over (it ended while this worker waited for a peer that
// has stopped answering: a server that shut down with the job).
class JobOver final : public ControlSignal {
 public:
  const char* what() const noexcept override { return "the job is over"; }
};

// Thrown by a wait when the coordinator announces a new partition table: the work in hand is
// dropped (the coordinator leased it again) and the worker reconnects.
class TableChanged final : public ControlSignal {
 public:
  const char* what() const noexcept override { return "the partition table changed"; }
};

// A checkpoint's `buffers` file: the model's batch-norm running statistics (async jobs: the
// servers hold only the trained parameters).
std::vector<float> to_host(Backend& backend, const Tensor& t) {
  std::vector<float> host(static_cast<std::size_t>(t.numel()));
  if (!host.empty()) backend.copy_to_host(t, host.data());
  return host;
}

// A worker's part of a checkpoint: async, its batch-norm buffers (the servers hold the rest);
// rank 0 of a sync job, the whole state every rank holds: parameters, optimizer state,
// buffers, and the trainer's step (the learning-rate schedule and dropout are functions of it).
// `within` (sync, cut mid-epoch): the epoch and the samples of it trained, recorded in `trainer`
// so that every rank resumes there.
struct WithinEpoch {
  std::int64_t epoch = 0, position = 0;
};

void save_state(JobContext& job, const LeaseTask& task, std::optional<WithinEpoch> within = std::nullopt) {
  auto started = std::chrono::steady_clock::now();
  std::vector<float> buffers = to_host(*job.backend, job.model->params().buffer_values());
  CheckpointReport report{task.step, {}, 0, 0};
  report.files.push_back(
      write_file_atomic(task.dir, checkpoint_file::kBuffers, Pieces{{buffers.data(), buffers.size() * sizeof(float)}}));
  if (OptimizerState* state = job.strategy.optimizer_state()) {
    const Optimizer& optimizer = *job.strategy.optimizer();
    const std::vector<float> values = to_host(*job.backend, job.model->params().values());
    std::vector<std::vector<float>> slots;
    StateToWrite range;
    range.begin = 0;
    range.end = job.model->params().parameter_count();
    range.values.emplace_back(values.data(), range.end);
    for (int k = 0; k < optimizer.slot_count(); ++k) {
      slots.push_back(to_host(*job.backend, state->slots[static_cast<std::size_t>(k)]));
      range.slots.emplace_back(optimizer.slot_name(k), slots.back().data());
    }
    range.updates.emplace_back(0, state->updates);
    report.files.push_back(write_state(task.dir, range));
    // The step, and where it is in the learning-rate schedule: not the step itself once an
    // elastic world was rescaled (the schedule then advanced n'/n per step).
    char schedule[64];
    std::snprintf(schedule, sizeof(schedule), "schedule %a\n", job.trainer.schedule_position(job.trainer.step()));
    std::string text = "step " + std::to_string(job.trainer.step()) + "\n" + std::string(schedule);
    if (within)
      text += "within_epoch " + std::to_string(within->epoch) + " position " + std::to_string(within->position) + "\n";
    report.files.push_back(write_file_atomic(task.dir, checkpoint_file::kTrainer, text));
  }
  report.write_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  try {
    job.control.report_checkpoint(report);
  } catch (const DetachedError&) {
    throw;  // the job failed, or this process was dropped from it
  } catch (const Error& e) {
    // The checkpoint was abandoned meanwhile, or died with a coordinator that was restarted:
    // the files stay without a MANIFEST (never restored) and training goes on.
    SHOAL_LOG(job.log, warn, "checkpoint step " << task.step << " not taken: " << e.what());
  }
}

// Resuming: the batch-norm buffers of the checkpoint, when it has them.
void restore_buffers(const std::string& dir, Backend& backend, Model& model, const Logger& log) {
  Manifest manifest = read_manifest(dir);
  const FileEntry* entry = manifest.find(checkpoint_file::kBuffers);
  Tensor& buffers = model.params().buffer_values();
  if (entry == nullptr || buffers.numel() == 0) return;
  std::string bytes = read_whole_file(dir + "/" + checkpoint_file::kBuffers);
  SHOAL_REQUIRE(bytes.size() == static_cast<std::size_t>(buffers.numel()) * sizeof(float) &&
                    crc32c(bytes.data(), bytes.size()) == entry->crc,
                CheckpointError,
                dir << "/buffers: " << bytes.size() << " bytes, or a checksum, that do not match the manifest and "
                    << "this model's " << buffers.numel() << " buffer values");
  backend.copy_from_host(bytes.data(), buffers);
  SHOAL_LOG(log, info, "restored the batch-norm buffers from " << dir);
}

// Resuming a sync job: every rank takes the whole state rank 0 wrote (the world may have
// another size now: the state does not depend on it).
std::optional<WithinEpoch> restore_sync_state(const std::string& dir, Backend& backend, Model& model,
                                              DistributedStrategy& strategy, Trainer& trainer, const Logger& log) {
  Manifest manifest = read_manifest(dir);
  auto ranges = list_ranges(dir, manifest);
  const std::int64_t n = model.params().parameter_count();
  OptimizerState& state = *strategy.optimizer_state();
  const Optimizer& optimizer = *strategy.optimizer();
  std::vector<float> values(static_cast<std::size_t>(n));
  std::vector<std::vector<float>> slots(static_cast<std::size_t>(optimizer.slot_count()),
                                        std::vector<float>(static_cast<std::size_t>(n)));
  std::vector<std::pair<std::string, float*>> slot_targets;
  for (int k = 0; k < optimizer.slot_count(); ++k)
    slot_targets.emplace_back(optimizer.slot_name(k), slots[static_cast<std::size_t>(k)].data());
  state.updates = read_state(dir, ranges, 0, n, values.data(), slot_targets);
  backend.copy_from_host(values.data(), model.params().values());
  for (int k = 0; k < optimizer.slot_count(); ++k)
    backend.copy_from_host(slots[static_cast<std::size_t>(k)].data(), state.slots[static_cast<std::size_t>(k)]);
  std::string text = read_whole_file(dir + "/" + checkpoint_file::kTrainer);
  long long step = -1;
  SHOAL_REQUIRE(std::sscanf(text.c_str(), "step %lld", &step) == 1 && step >= 0, CheckpointError,
                dir << "/trainer: expected 'step N', found '" << text.substr(0, 40) << "'");
  trainer.set_step(step);
  // Where the schedule stood (absent in checkpoints of older versions: the step itself). The
  // rate is the configured one again: the job resumes with its configured world.
  if (auto at = text.find("\nschedule "); at != std::string::npos) {
    char* end = nullptr;
    const double position = std::strtod(text.c_str() + at + 10, &end);
    SHOAL_REQUIRE(end != text.c_str() + at + 10 && std::isfinite(position) && position >= 0, CheckpointError,
                  dir << "/trainer: the schedule position is not a finite number ≥ 0");
    trainer.set_schedule_scaling({1, 1, position, step});
  }
  restore_buffers(dir, backend, model, log);
  // Cut mid-epoch: where the epoch stood.
  std::optional<WithinEpoch> within;
  if (auto at = text.find("\nwithin_epoch "); at != std::string::npos) {
    long long epoch = -1, position = -1;
    SHOAL_REQUIRE(std::sscanf(text.c_str() + at + 1, "within_epoch %lld position %lld", &epoch, &position) == 2 &&
                      epoch >= 1 && position >= 0,
                  CheckpointError, dir << "/trainer: expected 'within_epoch E position P' with E >= 1 and P >= 0");
    within = WithinEpoch{epoch, position};
  }
  SHOAL_LOG(log, info,
            "restored the parameters, optimizer state and step "
                << step << " from " << dir
                << (within ? " (cut in epoch " + std::to_string(within->epoch) + ", " +
                                 std::to_string(within->position) + " samples in: it goes on from there)"
                           : std::string()));
  return within;
}

// The one job loop of every distributed worker: ask the coordinator for work until the job is
// over; train what it hands out with the strategy, evaluate when asked, report each result.
// Honours a stop request at every phase; says goodbye when it fails on its own.
void run_job_loop(JobContext& job) {
  auto& [config, log, stop, control, heartbeat, strategy, trainer, data, backend, model, take_new_table, telemetry] =
      job;
  std::optional<WorkerTelemetry> gauges;
  if (telemetry != nullptr) gauges.emplace(telemetry->metrics);
  auto stopped = [stop = stop] { return stop != nullptr && stop->load(); };
  std::int64_t permutation_epoch = -1, logged_epoch = 0;
  std::vector<std::int64_t> order;
  std::int64_t shards = 0, samples = 0;
  // Best effort, bounded (a send or an acknowledgement that does not come in time is given up).
  auto goodbye = [&] {
    strategy.leave();
    control.leave();
  };
  // Failing on our own (a server that does not answer, a refused request): say goodbye, best
  // effort, so the coordinator acts at once instead of waiting for our heartbeats to stop.
  auto failed_on_our_own = [&](const Error& e) {
    SHOAL_LOG(log, error, "failed (" << exit_code_name(e.code()) << "); leaving the job: " << e.what());
    try {
      goodbye();
    } catch (...) {
      // Best effort: the error that brought us here is the one to report.
    }
  };
  auto leave = [&](const char* when) {
    goodbye();
    SHOAL_LOG(log, info, "stopped on request " << when << " after " << strategy.clock() << " steps; left the job");
  };
  // Failover (Heartbeat::enable_rejoin): a request that a coordinator could not answer because
  // it died, or that a restarted one refused because it does not know this process yet, is sent
  // again once the Heartbeat has registered this process with the restarted one. Meanwhile the
  // work in hand was done; check() ends the wait once cluster.coordinator_grace_seconds are over.
  auto ask = [&](auto&& call) {
    for (bool again = false;; again = true) {
      const std::uint64_t seen = heartbeat.rejoins();
      bool timed_out = false;
      try {
        return call(again);
      } catch (const CoordinatorRestarted&) {
        if (!heartbeat.rejoins_enabled()) throw;
      } catch (const DetachedError&) {
        throw;
      } catch (const TimeoutError&) {
        if (!heartbeat.rejoins_enabled() || !heartbeat.coordinator_silent() || heartbeat.job_end()) throw;
        timed_out = true;  // the coordinator went silent: it may come back as it was, or restarted
      }
      if (!heartbeat.await_rejoin(seen, stop, timed_out)) throw StopRequested{};
    }
  };
  try {
    bool started = false;
    while (true) {
      try {
        // Inside the loop: a world that changes during the first broadcast (elastic sync) is
        // re-formed like one that changes later (the re-formed world's state is adopted, so the
        // broadcast is not repeated).
        if (!started) {
          strategy.start();
          started = true;
        }
        if (stopped()) return leave("between steps");
        if (auto end = heartbeat.job_end()) {
          if (end->code != ExitCode::ok) throw_job_failure(*end);
          SHOAL_LOG(log, info, "stopping: the job is over");
          break;
        }
        heartbeat.check();  // the coordinator lost, or this worker dropped from the job
        // Async: parameters first, then the lease, so that in a synchronous parameter-server job
        // every worker's step c is drawn from the shards handed out for step c.
        strategy.before_task();
        heartbeat.set_clock(strategy.clock());
        heartbeat.set_held(HeldWork{});
        LeaseTask task = ask([&](bool) { return control.request_lease(); });
        if (task.kind == LeaseTask::finished) {
          strategy.leave();
          if (task.job_end.code != ExitCode::ok) throw_job_failure(task.job_end);
          SHOAL_LOG(log, info,
                    "job finished: trained " << shards << " shards, " << samples << " samples, " << strategy.clock()
                                             << " steps");
          break;
        }
        if (task.kind == LeaseTask::save_buffers) {
          save_state(job, task);
          continue;
        }
        if (task.kind == LeaseTask::wait) {
          strategy.idle();
          std::this_thread::sleep_for(std::chrono::milliseconds(std::min<std::uint32_t>(task.wait_ms, 5)));
          continue;
        }
        if (strategy.done_by_the_world(task.kind == LeaseTask::evaluate, task.epoch)) {
          SHOAL_LOG(log, info,
                    (task.kind == LeaseTask::evaluate ? "evaluation" : "training")
                        << " of epoch " << task.epoch << " was done by the world before it changed: passed");
          if (task.kind == LeaseTask::evaluate)
            ask([&](bool) { control.report_evaluation(task.epoch, 0, 0, 0); });
          else
            ask([&](bool again) { control.report_shard(task.epoch, task.index, 0, 0, 0, 0, 0, again); });
          continue;
        }
        if (task.kind == LeaseTask::evaluate) {
          SHOAL_LOG(log, info, "evaluating the model after epoch " << task.epoch);
          heartbeat.set_held(HeldWork{HeldWork::evaluation, task.epoch, 0});
          EvalResult r = strategy.evaluate(trainer, *data.test);
          if (stopped()) return leave("while evaluating");  // not reported: leaving hands the evaluation back
          ask([&](bool) { control.report_evaluation(task.epoch, r.loss, r.accuracy, r.samples); });
          continue;
        }
        if (task.epoch != permutation_epoch) {
          order = data.train->epoch_order(config.seed, task.epoch);
          permutation_epoch = task.epoch;
        }
        SHOAL_REQUIRE(task.end <= data.train->count(), ProtocolError,
                      "shard [" << task.begin << ", " << task.end << ") is outside the " << data.train->count()
                                << " training samples this worker has: do all processes use the same data?");
        if (task.epoch > logged_epoch) {  // one line per epoch, so a supervisor (or a test) sees progress
          SHOAL_LOG(log, info, "training epoch " << task.epoch << " (first shard: " << task.index << ")");
          logged_epoch = task.epoch;
        }
        heartbeat.set_held(HeldWork{HeldWork::shard, task.epoch, task.index});
        auto started = std::chrono::steady_clock::now();
        const double waited = trainer.total_data_wait_seconds();
        LossStats s =
            strategy.train(trainer, *data.train, order, DataShard{task.epoch, task.index, task.begin, task.end});
        if (stopped()) return leave("mid-shard");  // a partial shard is not reported; leaving returns it
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        const double data_wait = trainer.total_data_wait_seconds() - waited;
        ask([&](bool again) {
          control.report_shard(task.epoch, task.index, s.count, s.loss_sum, s.correct, seconds, data_wait, again);
        });
        if (gauges) gauges->shard_done(task.epoch, strategy.clock(), s, seconds, data_wait);
        ++shards;
        samples += s.count;
      } catch (const TableChanged&) {
        // Async: a parameter server was lost; elastic sync: a rank was. The hook says which.
        if (!take_new_table()) return leave("while waiting for the job's new table");
      }
    }
  } catch (const WorldStops&) {
    // Every rank stops at this step; rank 0 had it checkpointed, and the coordinator ends the
    // job once the checkpoint is complete. Wait for that end (bounded: the write, then the
    // MANIFEST).
    SHOAL_LOG(log, warn,
              "the world agreed to stop (SIGTERM) after step " << trainer.step() << "; waiting for the job's end");
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(
                                               Seconds(2 * config.request_timeout_seconds + config.dead_after_seconds));
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto end = heartbeat.job_end()) {
        if (end->code != ExitCode::ok) throw_job_failure(*end);
        SHOAL_LOG(log, info, "stopping: " << end->reason);
        return;
      }
      heartbeat.check();
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    SHOAL_THROW(TimeoutError, "the world stopped at step "
                                  << trainer.step() << " but the job did not end within "
                                  << 2 * config.request_timeout_seconds + config.dead_after_seconds
                                  << " s (was its checkpoint written?)");
  } catch (const JobOver&) {
    SHOAL_LOG(log, info, "stopping: the job is over (it ended while this worker waited for its peers)");
  } catch (const StopRequested&) {
    return leave("while waiting for parameters or for its peers");
  } catch (const DetachedError&) {
    throw;  // the job failed, or we were dropped from it: nobody to say goodbye to
  } catch (const CollectiveError&) {
    // A peer failed, not us: saying goodbye would have the coordinator blame this rank.
    throw;
  } catch (const TimeoutError& e) {
    // A request the coordinator never answered because the job ended meanwhile (it stops
    // once every process has heard, from a heartbeat, that the job is over): the job's end
    // decides, not the lost reply.
    if (auto end = heartbeat.job_end()) {
      if (end->code != ExitCode::ok) throw_job_failure(*end);
      SHOAL_LOG(log, info, "stopping: the job is over (" << e.what() << ")");
      return;
    }
    failed_on_our_own(e);
    throw;
  } catch (const Error& e) {
    failed_on_our_own(e);
    throw;
  }
}

// A collective failed because a peer did: the coordinator learns which rank from heartbeats
// (or its goodbye) and ends the job naming it. Wait a little for that verdict, so every rank
// reports the same one line naming the lost rank instead of a transport error.
[[noreturn]] void rethrow_with_verdict(Heartbeat& heartbeat, const JobConfig& config) {
  std::exception_ptr error = std::current_exception();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(Seconds(
                                                         config.dead_after_seconds + 2 * config.heartbeat_seconds));
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto end = heartbeat.job_end(); end && end->code != ExitCode::ok) throw_job_failure(*end);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::rethrow_exception(error);
}

struct Loaded {
  std::unique_ptr<Backend> backend;
  DataSources data;
  std::unique_ptr<Model> model;
};

Loaded load(const JobConfig& config, const DeviceChoice& device, const Logger& log) {
  Loaded l;
  SHOAL_LOG(log, info, device.why);
  l.backend = make_backend(BackendOptions{device.device, static_cast<int>(config.threads), config.cuda_tf32});
  l.data = open_data(config.data, log);
  const DatasetInfo& info = l.data.train->info();
  l.model = build_model(config.model, Shape{info.channels, info.height, info.width}, info.classes);
  l.model->build(*l.backend, config.seed);
  return l;
}

// A GPU worker says how much device memory its pool took (nothing to say on the CPU).
void report_memory(Backend& backend, const Logger& log) {
  if (backend.device().kind != DeviceKind::cpu) SHOAL_LOG(log, info, describe_memory(backend.memory_stats()));
}

struct Joined {
  std::string id;
  PartitionTable table;
};

// Registers, then waits for the job to start (the table); nothing if stopped first (logged,
// and the coordinator told).
std::optional<Joined> join_job(ControlClient& control, const JobConfig& config, int rank, Logger& log,
                               const std::atomic<bool>* stop) {
  Seconds startup(config.startup_timeout_seconds);
  auto registered = control.register_node(wire::Role::WORKER, rank, "", startup, stop);
  if (!registered) {
    SHOAL_LOG(log, info, "stopped on request before it registered; left the job (it had no part in it yet)");
    return std::nullopt;
  }
  log = log.with_role(*registered);
  // The coordinator ends the job (and says so) if the cluster does not assemble within the
  // start-up timeout; this deadline is only a backstop for a coordinator that went silent.
  auto fetched = control.fetch_table(2 * startup, stop);
  if (!fetched) {
    control.leave();
    SHOAL_LOG(log, info, "stopped on request before the job started; left the job");
    return std::nullopt;
  }
  return Joined{*registered, *fetched};
}

// Ends a wait when the job failed or the coordinator is gone.
std::function<void()> job_watch(Heartbeat& heartbeat) {
  return [&heartbeat] {
    if (auto end = heartbeat.job_end()) {
      if (end->code != ExitCode::ok) throw_job_failure(*end);
      throw JobOver{};
    }
    heartbeat.check();
  };
}

void run_async_worker(Network& network, const JobConfig& config, Logger log, const std::atomic<bool>* stop,
                      Telemetry* telemetry) {
  if (!config.auth_keys.empty())
    use_job_keys(network, config.auth_keys, key_member("worker", config.node_rank), log, telemetry);
  Loaded l = load(config, choose_device(config.device, config.node_local_rank), log);
  Seconds timeout(config.request_timeout_seconds), startup(config.startup_timeout_seconds);
  ControlClient control(network, config.coordinator_address, "worker.starting-" + std::to_string(getpid()), log,
                        timeout);
  control.set_device(l.backend->device().str());
  const std::string settings = job_settings_text(config, SettingsRegistry());
  control.set_job_settings(settings, settings_digest(settings));
  auto joined = join_job(control, config, static_cast<int>(config.node_rank), log, stop);
  if (!joined) return;
  if (telemetry != nullptr) telemetry->ready = true;
  const std::string& id = joined->id;
  Heartbeat heartbeat(network, config.coordinator_address, id, log, Seconds(config.heartbeat_seconds),
                      Seconds(config.dead_after_seconds));
  if (config.coordinator_failover()) {
    heartbeat.enable_rejoin(Heartbeat::Identity{wire::Role::WORKER, rank_of_member(id), "", l.backend->device().str(),
                                                settings, settings_digest(settings)},
                            Seconds(config.coordinator_grace_seconds));
    heartbeat.set_claim(RejoinClaim{joined->table.version, {}});
    control.watch_coordinator(&heartbeat, /*when_silent=*/false);
  }

  AsyncPsOptions options;
  options.client.max_in_flight = static_cast<int>(config.max_in_flight);
  options.client.request_timeout = timeout;
  options.client.startup_timeout = startup;
  options.stop = stop;
  options.client.on_clock = [&heartbeat](std::uint64_t clock) { heartbeat.set_clock(clock); };
  if (telemetry != nullptr) options.client.metrics = &telemetry->metrics;
  std::uint64_t table_version = joined->table.version;
  options.client.watch = [&heartbeat, &table_version, job = job_watch(heartbeat)] {
    job();
    if (heartbeat.table_version() > table_version) throw TableChanged{};
  };
  if (!joined->table.restore.empty()) restore_buffers(joined->table.restore, *l.backend, *l.model, log);
  AsyncPsStrategy strategy(network, joined->table, id, *l.backend, *l.model, log, options);
  SHOAL_LOG(log, info, "registered; " << strategy.describe() << "; backend " << l.backend->describe());

  Progress progress(ProgressMode::off, stdout);
  MetricsWriter no_metrics;
  // Dropout differs per worker.
  Trainer trainer(*l.backend, *l.model, strategy,
                  trainer_options(config, hash_combine(config.seed, hash_string(id)), joined->table.steps_per_epoch),
                  log, progress, no_metrics);
  trainer.set_stop_flag(stop);
  auto take_new_table = [&]() -> bool {
    SHOAL_LOG(log, warn, "a parameter server was lost: dropping the work in hand and waiting for the new table");
    auto table = control.fetch_table(2 * startup, stop);
    if (!table) return false;
    table_version = table->version;
    heartbeat.set_claim(RejoinClaim{table_version, {}});
    strategy.retarget(network, *table);
    return true;
  };
  JobContext job{config,          log,           stop,           control,  heartbeat, strategy, trainer, l.data,
                 l.backend.get(), l.model.get(), take_new_table, telemetry};
  run_job_loop(job);
  report_memory(*l.backend, log);
}

// A sync worker once it has joined the job: the world it trains in and the world's re-forming
// (elastic). Its members are the state every phase shares: the generation of the world this
// rank forms or trains in, the collective formed for it, and the strategy and trainer that
// train in it. Elastic: a new table version is a new world (a rank was lost, or one joined):
// every wait ends (watch), and the job loop forms it (reform).
class SyncWorkerRun {
 public:
  SyncWorkerRun(const JobConfig& config, const SyncSetup& setup, Loaded& loaded, ControlClient& control,
                Heartbeat& heartbeat, std::string id, Logger& log, const std::atomic<bool>* stop, Telemetry* telemetry)
      : config_(config),
        setup_(setup),
        loaded_(loaded),
        control_(control),
        heartbeat_(heartbeat),
        id_(std::move(id)),
        log_(log),
        stop_(stop),
        telemetry_(telemetry),
        startup_(config.startup_timeout_seconds),
        job_watch_(job_watch(heartbeat)),
        // SIGTERM: the world agrees on a step, rank 0 checkpoints it and every rank exits 0; in
        // an elastic world a rank other than 0 (which hosts the coordinator) leaves instead, and
        // the others go on without it.
        agree_on_stop_(!config.sync_elastic || setup.world.rank == 0),
        last_cut_(std::chrono::steady_clock::now()) {}

  // Forms the world of `joined` (the table this rank joined with), takes its state and trains
  // until the job is over. False: stopped while waiting for a table, before training.
  bool run(const PartitionTable& joined);

 private:
  // Ends a wait when the job failed or is over, this worker was asked to stop, or (elastic) the
  // world changed.
  void watch() const;
  // The first world: the table's place for this rank, or the world's own when it has none. If
  // the world changes while this rank forms it, it forms the newer one (into `first`). False:
  // stopped while waiting for the newer table.
  bool form_first_world(PartitionTable& first);
  // Forms the world `table` describes (fetched when absent) and takes the state from its most
  // advanced member; if the world changes again meanwhile (the watch throws TableChanged in the
  // rendezvous or in a collective), forms the newer one. previous_size and previous_rank: the
  // world this rank last trained in (0, -1: none, it joined and holds no state yet). False:
  // stopped while waiting for a table.
  bool form_world(std::optional<PartitionTable> table, int previous_size, int previous_rank);
  // Elastic: the world changed (a rank was lost, or one joined): re-forms it in place.
  bool reform();
  // The world of generation `table` for this rank: the setup with the table's rank and size.
  SyncSetup world_of(const PartitionTable& table) const;
  // Between two steps of an epoch (every rank): rank 0 has a checkpoint cut there when one is
  // due (checkpoint.every_steps, every_seconds) and when the world agreed to stop.
  void cut_between_steps(const SyncOptions::BetweenSteps& at);

  const JobConfig& config_;
  const SyncSetup& setup_;
  Loaded& loaded_;
  ControlClient& control_;
  Heartbeat& heartbeat_;
  const std::string id_;
  Logger& log_;
  const std::atomic<bool>* stop_;
  Telemetry* telemetry_;
  const Seconds startup_;
  const std::function<void()> job_watch_;
  std::uint64_t world_version_ = 0;  // the generation of the world this rank forms or trains in
  std::uint64_t world_formed_ = 0;   // the generation `collective_` was formed in (0: aborted)
  bool has_state_ = true;            // false: joined a running world, its state not taken yet
  std::unique_ptr<Collective> collective_;
  Progress progress_{ProgressMode::off, stdout};
  MetricsWriter no_metrics_;
  std::optional<SyncAllReduceStrategy> strategy_;  // made once the first world is formed
  std::optional<Trainer> trainer_;
  const bool agree_on_stop_;
  const std::atomic<bool> never_stops_{false};  // the vote of a rank that leaves on its own instead
  bool training_ = false;                       // the job loop runs (a stop is then the world's)
  JobContext* job_ = nullptr;
  std::chrono::steady_clock::time_point last_cut_;
};

void SyncWorkerRun::watch() const {
  job_watch_();
  // Once training, a stop of a rank that agrees on it is the world's (the vote), not this wait's.
  if (stop_ != nullptr && stop_->load() && !(agree_on_stop_ && training_)) throw StopRequested{};
  if (config_.sync_elastic && heartbeat_.table_version() > world_version_) throw TableChanged{};
}

SyncSetup SyncWorkerRun::world_of(const PartitionTable& table) const {
  SyncSetup world = setup_;
  world.world.rank = world.world.local_rank = table.world_rank;
  world.world.size = table.world_size;
  return world;
}

bool SyncWorkerRun::form_first_world(PartitionTable& first) {
  // A table that gives this rank a place in a re-formed world: the job is running (this rank
  // joins it, or it registered before a rank was lost and the world re-formed meanwhile).
  while (true) {
    const SyncSetup formed = first.world_rank >= 0 ? world_of(first) : setup_;
    world_version_ = first.version;
    try {
      collective_ = make_collective(formed, config_, control_, first.version, *loaded_.backend, [this] { watch(); });
      return true;
    } catch (const CollectiveError&) {
      rethrow_with_verdict(heartbeat_, config_);
    } catch (const TableChanged&) {
      auto newer = control_.fetch_table(2 * startup_, stop_);
      if (!newer) return false;
      first = *newer;
    }
  }
}

bool SyncWorkerRun::form_world(std::optional<PartitionTable> table, int previous_size, int previous_rank) {
  while (true) {
    if (!table) {
      table = control_.fetch_table(2 * startup_, stop_);
      if (!table) return false;
    }
    SHOAL_REQUIRE(table->world_rank >= 0, ProtocolError,
                  "the coordinator published table version " << table->version << " without this rank's place");
    world_version_ = table->version;
    try {
      if (world_formed_ != world_version_) {  // not formed yet for this generation
        collective_->abort("the world is re-formed");
        collective_ =
            make_collective(world_of(*table), config_, control_, table->version, *loaded_.backend, [this] { watch(); });
        world_formed_ = world_version_;
      }
      strategy_->adopt(*collective_, *trainer_, has_state_ ? previous_size : 0, has_state_ ? previous_rank : -1);
      has_state_ = true;
      return true;
    } catch (const TableChanged&) {
      SHOAL_LOG(log_, warn, "the world changed again while it was forming: forming the newer one");
      table.reset();
    }
  }
}

bool SyncWorkerRun::reform() {
  const auto started = std::chrono::steady_clock::now();
  SHOAL_LOG(log_, warn, "the world changed: re-forming it in place");
  const int previous_size = collective_->size(), previous_rank = collective_->rank();
  collective_->abort("the world is re-formed");
  world_formed_ = 0;
  if (!form_world(std::nullopt, previous_size, previous_rank)) return false;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  SHOAL_LOG(log_, info,
            "the world is re-formed: rank "
                << collective_->rank() << " of " << collective_->size() << " (was " << previous_rank << " of "
                << previous_size << "), generation " << world_version_ << ", in " << seconds << " s; at step "
                << trainer_->step() << ", learning rate x" << collective_->size() << "/" << previous_size);
  return true;
}

void SyncWorkerRun::cut_between_steps(const SyncOptions::BetweenSteps& at) {
  if (collective_->rank() != 0 || job_ == nullptr) return;
  const auto now = std::chrono::steady_clock::now();
  const bool due =
      !config_.checkpoint_dir.empty() &&
      ((config_.checkpoint_every_steps > 0 && at.step > 0 && at.step % config_.checkpoint_every_steps == 0) ||
       (config_.checkpoint_every_seconds > 0 &&
        std::chrono::duration<double>(now - last_cut_).count() >= config_.checkpoint_every_seconds));
  if (!due && !at.stop) return;
  // The epoch's statistics so far, for the whole world: this rank's, scaled to every rank's
  // samples (the others' are not gathered: an estimate, as after an elastic change).
  SyncCutRequest cut;
  cut.step = at.step;
  cut.epoch = at.epoch;
  cut.position = at.position;
  cut.stop = at.stop;
  cut.samples = std::max<std::int64_t>(0, at.position - at.from);
  if (at.so_far.count > 0) {
    const double scale = static_cast<double>(cut.samples) / static_cast<double>(at.so_far.count);
    cut.loss_sum = at.so_far.loss_sum * scale;
    cut.correct = std::min<std::int64_t>(
        cut.samples, static_cast<std::int64_t>(std::llround(static_cast<double>(at.so_far.correct) * scale)));
  }
  last_cut_ = now;
  if (auto order = control_.sync_cut(cut)) {
    save_state(*job_, *order, WithinEpoch{at.epoch, at.position});
    SHOAL_LOG(log_, info,
              "checkpoint of step " << at.step << " cut in epoch " << at.epoch << ", " << at.position
                                    << " samples in, written to " << order->dir);
  }
}

bool SyncWorkerRun::run(const PartitionTable& joined) {
  PartitionTable first = joined;
  if (!form_first_world(first)) return false;
  const bool joins_running_world = first.world_rank >= 0;
  world_formed_ = first.version;
  Loaded& l = loaded_;
  SyncOptions options;
  options.bucket_bytes = static_cast<std::size_t>(config_.bucket_mib * (1 << 20));
  options.timeout = Seconds(config_.sync_timeout_seconds);
  options.sync_batch_norm = config_.sync_batch_norm == BatchNormMode::sync;
  options.batch_size = config_.batch_size;
  options.watch = [this] { watch(); };
  options.stop = agree_on_stop_ && stop_ != nullptr ? stop_ : &never_stops_;
  options.between_steps = [this](const SyncOptions::BetweenSteps& at) { cut_between_steps(at); };
  if (config_.sync_elastic)  // the coordinator's verdict on a lost rank comes within a liveness period
    options.verdict_wait = Seconds(config_.dead_after_seconds + 2 * config_.heartbeat_seconds + 1);
  strategy_.emplace(*l.backend, *l.model, Optimizer(config_.optimizer), *collective_, log_, options);
  SHOAL_LOG(log_, info,
            "registered as " << id_ << "; " << strategy_->describe() << " (" << setup_.why << "); backend "
                             << l.backend->describe());
  // Every rank draws the randomness one process with the global batch would (dropout).
  std::int64_t steps_per_epoch =
      std::max<std::int64_t>(1, l.data.train->count() / (config_.batch_size * config_.accumulate * setup_.world.size));
  TrainerOptions topts = trainer_options(config_, config_.seed, steps_per_epoch);
  trainer_.emplace(*l.backend, *l.model, *strategy_, topts, log_, progress_, no_metrics_);
  trainer_->set_stop_flag(agree_on_stop_ ? nullptr : stop_);
  const bool new_rank = joins_running_world && first.previous_ranks[static_cast<std::size_t>(first.world_rank)] < 0;
  has_state_ = !new_rank;
  if (joins_running_world) {
    // Its state comes from the most advanced member, not from disk or rank 0's initial broadcast.
    const auto started = std::chrono::steady_clock::now();
    try {
      if (!form_world(first, setup_.world.size, setup_.world.rank)) return false;
    } catch (const CollectiveError&) {
      rethrow_with_verdict(heartbeat_, config_);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    SHOAL_LOG(log_, info,
              (new_rank ? "joined the running job: rank " : "the world re-formed before the job started: rank ")
                  << collective_->rank() << " of " << collective_->size() << ", generation " << world_version_
                  << "; took the state of the most advanced member in " << seconds << " s; at step "
                  << trainer_->step());
  } else if (!first.restore.empty()) {
    if (auto within = restore_sync_state(first.restore, *l.backend, *l.model, *strategy_, *trainer_, log_))
      strategy_->resume_within(within->epoch, within->position);
  }
  JobContext job{config_,
                 log_,
                 agree_on_stop_ ? nullptr : stop_,
                 control_,
                 heartbeat_,
                 *strategy_,
                 *trainer_,
                 l.data,
                 l.backend.get(),
                 l.model.get(),
                 config_.sync_elastic ? std::function<bool()>([this] { return reform(); }) : std::function<bool()>(),
                 telemetry_};
  job_ = &job;
  training_ = true;
  try {
    run_job_loop(job);
  } catch (const CollectiveError&) {
    rethrow_with_verdict(heartbeat_, config_);
  } catch (const TimeoutError&) {
    rethrow_with_verdict(heartbeat_, config_);
  }
  collective_.reset();
  return true;
}

// Rank 0 of a sync job runs the coordinator as a thread; `config` then names its address (this
// host's, when ranks run on other hosts).
void host_coordinator(std::optional<EmbeddedCoordinator>& coordinator, Network& network, JobConfig& config,
                      const SyncSetup& setup, const Logger& log, Telemetry* telemetry) {
  JobConfig cc = config;
  bool one_host = !setup.under_mpirun || setup.world.local_size == setup.world.size;
  if (!one_host) {
    // Ranks on other hosts: listen on every interface, announce this host's address.
    auto colon = config.coordinator_address.rfind(':');
    cc.coordinator_address = "tcp://*:" + config.coordinator_address.substr(colon + 1);
  }
  coordinator.emplace(network, cc, log, telemetry);
  std::string endpoint = coordinator->endpoint();
  if (!one_host) {
    auto colon = endpoint.rfind(':');
    endpoint = "tcp://" + host_address(config.sync_interface) + endpoint.substr(colon);
  }
  config.coordinator_address = endpoint;
}

void run_sync_worker(Network& network, JobConfig config, Logger log, const std::atomic<bool>* stop,
                     Telemetry* telemetry) {
  // The device kind decides the collective (auto: nccl on GPUs); the GPU index needs the rank.
  const bool cuda =
      choose_device(config.device, std::nullopt, cuda_device_count(), cuda_built()).device.kind == DeviceKind::cuda;
  SyncSetup setup = resolve_sync_setup(config, cuda);
  if (setup.under_mpirun) {
    // The world is what mpirun started; the coordinator runs in rank 0 and its address
    // reaches the others by MPI_Bcast, so nothing else needs starting.
    mpi::init();
    if (config.workers != setup.world.size)
      SHOAL_LOG(log, info, "cluster.workers = " << setup.world.size << " (the size of the world mpirun started)");
    config.workers = setup.world.size;
  }
  log = log.with_role("rank." + std::to_string(setup.world.rank));
  if (!config.auth_keys.empty())
    use_job_keys(network, config.auth_keys, key_member("worker", setup.world.rank), log, telemetry);
  std::optional<EmbeddedCoordinator> coordinator;
  if (setup.world.rank == 0) host_coordinator(coordinator, network, config, setup, log, telemetry);
  if (setup.under_mpirun) config.coordinator_address = mpi::broadcast_string(config.coordinator_address, 0);

  std::optional<LocalRank> local_rank = local_rank_of(config.node_local_rank);
  if (!local_rank) local_rank = LocalRank{setup.world.local_rank, "the rank of a sync worker"};
  Loaded l = load(config, choose_device(config.device, local_rank, cuda_device_count(), cuda_built()), log);
  Seconds timeout(config.request_timeout_seconds);
  ControlClient control(network, config.coordinator_address, "worker.starting-" + std::to_string(getpid()), log,
                        timeout);
  control.set_device(l.backend->device().str());
  const std::string settings = job_settings_text(config, SettingsRegistry());
  control.set_job_settings(settings, settings_digest(settings));
  auto joined = join_job(control, config, setup.world.rank, log, stop);
  if (!joined) return;
  if (telemetry != nullptr) telemetry->ready = true;
  Heartbeat heartbeat(network, config.coordinator_address, joined->id, log, Seconds(config.heartbeat_seconds),
                      Seconds(config.dead_after_seconds));
  SyncWorkerRun run(config, setup, l, control, heartbeat, joined->id, log, stop, telemetry);
  if (!run.run(joined->table)) return;
  report_memory(*l.backend, log);
  if (setup.under_mpirun && !(stop != nullptr && stop->load())) mpi::finalize();
}

}  // namespace

void run_worker_role(Network& network, const JobConfig& config, Logger log, const std::atomic<bool>* stop,
                     Telemetry* telemetry) {
  if (config.sync())
    run_sync_worker(network, config, std::move(log), stop, telemetry);
  else
    run_async_worker(network, config, std::move(log), stop, telemetry);
}

}  // namespace shoal
