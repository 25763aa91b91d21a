#include "worker/train_job.h"
#include "compute/devices/devices.h"

#include <chrono>
#include <cstdio>

#include "compute/devices/device_select.h"
#include "base/error.h"
#include "base/process.h"
#include "models/model_file.h"

namespace shoal {

TrainJobResult run_train_job(const JobConfig& config, const Logger& log) {
  auto started = std::chrono::steady_clock::now();
  DeviceChoice device = choose_device(config.device, config.node_local_rank);
  SHOAL_LOG(log, info, device.why);
  auto backend = make_backend(BackendOptions{device.device, static_cast<int>(config.threads), config.cuda_tf32});
  SHOAL_LOG(log, info, "backend: " << backend->describe());

  DataSources data = open_data(config.data, log);
  const DatasetInfo& info = data.train->info();
  SHOAL_LOG(log, info,
            "data: " << data.train->name() << " " << info.count << " samples, " << data.test->name() << " "
                     << data.test->count() << " samples, " << info.channels << "x" << info.height << "x" << info.width
                     << ", " << info.classes << " classes");

  auto model = build_model(config.model, Shape{info.channels, info.height, info.width}, info.classes);
  model->build(*backend, config.seed);
  std::printf("%s\n", model->summary().c_str());

  OptimizerConfig opt = config.optimizer;
  LocalStrategy strategy(*backend, *model, Optimizer(opt));
  // Optimizer steps: batches of train.batch_size, train.accumulate of them a step.
  const std::int64_t batches = (info.count + config.batch_size - 1) / config.batch_size;
  std::int64_t steps_per_epoch = (batches + config.accumulate - 1) / config.accumulate;
  TrainerOptions options = trainer_options(config, config.seed, steps_per_epoch);

  Progress progress(resolve_progress_mode(config.progress, stdout), stdout);
  MetricsWriter metrics = config.metrics_file.empty() ? MetricsWriter() : MetricsWriter(config.metrics_file);
  metrics.write({{"event", std::string("start")},
                 {"model", config.model},
                 {"parameters", model->params().parameter_count()},
                 {"train_samples", info.count},
                 {"test_samples", data.test->count()},
                 {"batch_size", config.batch_size},
                 {"backend", backend->describe()}});
  Trainer trainer(*backend, *model, strategy, options, log, progress, metrics);
  TrainJobResult result;
  result.epochs = trainer.run(*data.train, *data.test);
  result.final_test_accuracy = result.epochs.empty() ? 0 : result.epochs.back().test.accuracy;
  double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const double peak_mib = static_cast<double>(peak_rss_bytes()) / (1 << 20);
  std::printf("final test accuracy: %.2f%% (%s, %lld epochs, %.1f s, peak memory %.0f MiB)\n",
              100 * result.final_test_accuracy, config.model.c_str(), static_cast<long long>(config.epochs), total,
              peak_mib);
  std::fflush(stdout);
  if (backend->device().kind != DeviceKind::cpu) SHOAL_LOG(log, info, describe_memory(backend->memory_stats()));
  metrics.write(
      {{"event", std::string("end")},
       {"final_test_accuracy", result.final_test_accuracy},
       {"seconds", total},
       {"peak_rss_mib", peak_mib}});
  return result;
}

}  // namespace shoal
