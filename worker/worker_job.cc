#include "worker/worker_job.h"

#include <unistd.h>

#include <chrono>
#include <thread>

#include "core/control_client.h"
#include "core/error.h"
#include "core/rng.h"
#include "models/dataset.h"
#include "worker/async_ps.h"
#include "worker/trainer.h"

namespace shoal {

void run_worker_role(Network& network, const JobConfig& config, Logger log, const std::atomic<bool>* stop) {
  auto stopped = [stop] { return stop != nullptr && stop->load(); };
  auto backend = make_backend(BackendOptions{Device::cpu(), static_cast<int>(config.threads)});
  TrainTestData data = load_train_test(config.data_format, config.data_dir, config.train_limit, config.test_limit);
  Normalization norm =
      config.normalize ? compute_normalization(data.train) : identity_normalization(data.train.channels);
  auto model =
      build_model(config.model, Shape{data.train.channels, data.train.height, data.train.width}, data.train.classes);
  model->build(*backend, config.seed);

  Seconds timeout(config.request_timeout_seconds), startup(config.startup_timeout_seconds);
  ControlClient control(network, config.coordinator_address, "worker.starting-" + std::to_string(getpid()), log,
                        timeout);
  auto registered = control.register_node(wire::Role::WORKER, static_cast<int>(config.node_rank), "", startup, stop);
  if (!registered) {
    SHOAL_LOG(log, info, "stopped on request before it registered; left the job (it had no part in it yet)");
    return;
  }
  const std::string id = *registered;
  log = log.with_role(id);
  // The coordinator ends the job (and says so) if the cluster does not assemble within the
  // start-up timeout; this deadline is only a backstop for a coordinator that went silent.
  auto fetched = control.fetch_table(2 * startup, stop);
  if (!fetched) {
    control.leave();
    SHOAL_LOG(log, info, "stopped on request before the job started; left the job");
    return;
  }
  const PartitionTable& table = *fetched;
  SHOAL_LOG(log, info,
            "registered; " << table.servers.size() << " servers, " << table.chunks.size() << " chunks; backend "
                           << backend->describe());
  Heartbeat heartbeat(network, config.coordinator_address, id, log, Seconds(config.heartbeat_seconds),
                      Seconds(config.dead_after_seconds));

  AsyncPsOptions options;
  options.max_in_flight = static_cast<int>(config.max_in_flight);
  options.request_timeout = timeout;
  options.startup_timeout = startup;
  options.stop = stop;
  options.watch = [&heartbeat] {
    if (auto end = heartbeat.job_end(); end && end->code != ExitCode::ok) throw_job_failure(*end);
    heartbeat.check();
  };
  AsyncPsStrategy strategy(network, table, id, *model, log, options);

  TrainerOptions trainer_options;
  trainer_options.batch_size = config.batch_size;
  trainer_options.eval_batch_size = config.eval_batch_size;
  trainer_options.seed = hash_combine(config.seed, hash_string(id));  // dropout differs per worker
  Progress progress(ProgressMode::off, stdout);
  MetricsWriter no_metrics;
  Trainer trainer(*backend, *model, strategy, norm, trainer_options, log, progress, no_metrics);
  trainer.set_stop_flag(stop);

  std::int64_t permutation_epoch = -1, logged_epoch = 0;
  std::vector<std::int64_t> order;
  std::int64_t shards = 0, samples = 0;
  // Best effort, bounded (a send or an acknowledgement that does not come in time is given up).
  auto goodbye = [&] {
    strategy.leave();
    control.leave();
  };
  auto leave = [&](const char* when) {
    goodbye();
    SHOAL_LOG(log, info, "stopped on request " << when << " after " << strategy.clock() << " steps; left the job");
  };
  try {
    while (true) {
      if (stopped()) return leave("between steps");
      if (auto end = heartbeat.job_end()) {
        if (end->code != ExitCode::ok) throw_job_failure(*end);
        SHOAL_LOG(log, info, "stopping: the job is over");
        break;
      }
      heartbeat.check();  // the coordinator lost, or this worker dropped from the job
      // Parameters first, then the lease: in a synchronous job this keeps every worker's step
      // c drawn from the shards handed out for step c.
      strategy.await_parameters();
      heartbeat.set_clock(strategy.clock());
      LeaseTask task = control.request_lease();
      if (task.kind == LeaseTask::finished) {
        strategy.leave();
        if (task.job_end.code != ExitCode::ok) throw_job_failure(task.job_end);
        SHOAL_LOG(log, info,
                  "job finished: trained " << shards << " shards, " << samples << " samples, " << strategy.clock()
                                           << " steps");
        break;
      }
      if (task.kind == LeaseTask::wait) {
        strategy.idle_step();
        std::this_thread::sleep_for(std::chrono::milliseconds(std::min<std::uint32_t>(task.wait_ms, 5)));
        continue;
      }
      if (task.kind == LeaseTask::evaluate) {
        SHOAL_LOG(log, info, "evaluating the model after epoch " << task.epoch);
        EvalResult r = trainer.evaluate(data.test);
        if (stopped()) return leave("while evaluating");  // not reported: leaving hands the evaluation back
        control.report_evaluation(task.epoch, r.loss, r.accuracy, r.samples);
        continue;
      }
      if (task.epoch != permutation_epoch) {
        order = epoch_permutation(data.train.count, config.seed, task.epoch);
        permutation_epoch = task.epoch;
      }
      SHOAL_REQUIRE(task.end <= data.train.count, ProtocolError,
                    "shard [" << task.begin << ", " << task.end << ") is outside the " << data.train.count
                              << " training samples this worker has: do all processes use the same data?");
      if (task.epoch > logged_epoch) {  // one line per epoch, so a supervisor (or a test) sees progress
        SHOAL_LOG(log, info, "training epoch " << task.epoch << " (first shard: " << task.index << ")");
        logged_epoch = task.epoch;
      }
      auto started = std::chrono::steady_clock::now();
      LossStats s = trainer.train_shard(data.train, order, DataShard{task.epoch, task.index, task.begin, task.end});
      if (stopped()) return leave("mid-shard");  // a partial shard is not reported; leaving returns it
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      control.report_shard(task.epoch, task.index, s.count, s.loss_sum, s.correct, seconds);
      ++shards;
      samples += s.count;
    }
  } catch (const StopRequested&) {
    return leave("while waiting for parameters");
  } catch (const DetachedError&) {
    throw;  // the job failed, or we were dropped from it: nobody to say goodbye to
  } catch (const Error& e) {
    // Failing on our own (a server that does not answer, a refused request): say goodbye,
    // best effort, so the coordinator hands our leases to the others at once and the servers
    // stop counting us, instead of both waiting for our heartbeats to stop.
    SHOAL_LOG(log, error, "failed (" << exit_code_name(e.code()) << "); leaving the job: " << e.what());
    try {
      goodbye();
    } catch (...) {
      // Best effort: the error that brought us here is the one to report.
    }
    throw;
  }
}

}  // namespace shoal
