#include "worker/trainer.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "base/error.h"
#include "compute/rng.h"

namespace shoal {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

TrainerOptions trainer_options(const JobConfig& config, std::uint64_t seed, std::int64_t steps_per_epoch) {
  TrainerOptions o;
  o.epochs = config.epochs;
  o.batch_size = config.batch_size;
  o.eval_batch_size = config.eval_batch_size;
  o.seed = seed;
  o.schedule = make_lr_schedule(config.lr_schedule_settings(), steps_per_epoch, config.epochs);
  return o;
}

Trainer::Trainer(Backend& backend, Model& model, Strategy& strategy, const Normalization& norm, TrainerOptions options,
                 Logger log, Progress& progress, MetricsWriter& metrics)
    : backend_(backend),
      model_(model),
      strategy_(strategy),
      norm_(norm),
      options_(options),
      log_(std::move(log)),
      progress_(progress),
      metrics_(metrics) {}

void Trainer::load_batch(const Dataset& data, std::span<const std::int64_t> samples) {
  const auto n = static_cast<std::int64_t>(samples.size());
  Shape xs{n, data.channels, data.height, data.width};
  if (backend_.device().kind == DeviceKind::cpu) {
    if (!x_.defined() || !(x_.shape() == xs)) {
      x_ = backend_.allocate(xs);
      y_ = backend_.allocate(Shape{n}, DType::i32);
    }
    gather_batch(data, norm_, samples, x_.data<float>(), y_.data<std::int32_t>());
    return;
  }
  // A device: gather into one of two pinned buffers and copy up asynchronously, so the host
  // gathers batch i + 1 while the device still runs the backward pass of batch i.
  Staging& s = staging_[slot_];
  slot_ ^= 1;
  if (s.uploaded) s.uploaded->wait();  // its copy from two batches ago has left the buffer
  if (!s.device_x.defined() || !(s.device_x.shape() == xs)) {
    s.host_x = backend_.allocate_host(xs);
    s.host_y = backend_.allocate_host(Shape{n}, DType::i32);
    s.device_x = backend_.allocate(xs);
    s.device_y = backend_.allocate(Shape{n}, DType::i32);
  }
  gather_batch(data, norm_, samples, s.host_x.data<float>(), s.host_y.data<std::int32_t>());
  backend_.copy_from_host_async(s.host_x.raw(), s.device_x);
  s.uploaded = backend_.copy_from_host_async(s.host_y.raw(), s.device_y);
  x_ = s.device_x;
  y_ = s.device_y;
}

LossStats Trainer::train_batch(const Dataset& data, std::span<const std::int64_t> samples) {
  load_batch(data, samples);
  strategy_.begin_step(model_, step_);
  LayerContext ctx{backend_, true, hash_combine(options_.seed, 0x44524f50ULL + static_cast<std::uint64_t>(step_)),
                   strategy_.batch_norm_sum(), strategy_.sample_offset()};
  const Tensor& logits = model_.forward(ctx, x_);
  if (!dlogits_.defined() || !(dlogits_.shape() == logits.shape())) dlogits_ = backend_.allocate(logits.shape());
  LossStats stats = backend_.softmax_cross_entropy(logits, y_, &dlogits_,
                                                   strategy_.loss_scale(static_cast<std::int64_t>(samples.size())));
  SHOAL_REQUIRE(std::isfinite(stats.loss_sum), DivergedError,
                "training diverged at step " << step_ << " (loss is not finite); lower optimizer.lr");
  model_.backward(ctx, dlogits_,
                  [&](const std::vector<Parameter*>& ready) { strategy_.gradients_ready(model_, ready); });
  strategy_.end_step(model_, step_, lr_at(step_));
  ++step_;
  return stats;
}

double Trainer::schedule_position(std::int64_t step) const {
  return schedule_from_ + static_cast<double>(step - rescaled_at_) * schedule_rate_;
}

float Trainer::lr_at(std::int64_t step) const {
  if (lr_scale_ == 1 && schedule_rate_ == 1 && schedule_from_ == static_cast<double>(rescaled_at_))
    return options_.schedule.at(step);  // never rescaled: the schedule's own step
  return static_cast<float>(lr_scale_) * options_.schedule.at(std::llround(std::max(0.0, schedule_position(step))));
}

void Trainer::rescale_schedule(double f) {
  schedule_from_ += static_cast<double>(step_ - rescaled_at_) * schedule_rate_;
  rescaled_at_ = step_;
  schedule_rate_ *= f;
  lr_scale_ *= f;
}

LossStats Trainer::train_shard(const Dataset& data, const std::vector<std::int64_t>& order, const DataShard& shard) {
  LossStats total;
  for (std::int64_t begin = shard.begin; begin < shard.end && !stopped(); begin += options_.batch_size) {
    std::int64_t end = std::min(shard.end, begin + options_.batch_size);
    auto start = std::chrono::steady_clock::now();
    LossStats s =
        train_batch(data, std::span<const std::int64_t>(order.data() + begin, static_cast<std::size_t>(end - begin)));
    epoch_seconds_ += seconds_since(start);
    total.loss_sum += s.loss_sum;
    total.correct += s.correct;
    total.count += s.count;
    epoch_stats_.loss_sum += s.loss_sum;
    epoch_stats_.correct += s.correct;
    epoch_stats_.count += s.count;
    epoch_samples_ += s.count;
    progress_.update(epoch_samples_, epoch_stats_.loss_sum / static_cast<double>(epoch_stats_.count),
                     static_cast<double>(epoch_stats_.correct) / static_cast<double>(epoch_stats_.count),
                     static_cast<double>(epoch_samples_) / std::max(epoch_seconds_, 1e-9));
  }
  return total;
}

EvalResult Trainer::evaluate(const Dataset& data) { return evaluate(data, 0, data.count); }

EvalResult Trainer::evaluate(const Dataset& data, std::int64_t first, std::int64_t last) {
  LayerContext ctx{backend_, false, 0};
  LossStats total;
  std::vector<std::int64_t> indices;
  for (std::int64_t begin = first; begin < last && !stopped(); begin += options_.eval_batch_size) {
    std::int64_t end = std::min(last, begin + options_.eval_batch_size);
    indices.resize(static_cast<std::size_t>(end - begin));
    for (std::int64_t i = begin; i < end; ++i) indices[static_cast<std::size_t>(i - begin)] = i;
    load_batch(data, indices);
    LossStats s = backend_.softmax_cross_entropy(model_.forward(ctx, x_), y_, nullptr, 1.f);
    total.loss_sum += s.loss_sum;
    total.correct += s.correct;
    total.count += s.count;
  }
  EvalResult r;
  r.samples = total.count;
  r.loss = total.count > 0 ? total.loss_sum / static_cast<double>(total.count) : 0;
  r.accuracy = total.count > 0 ? static_cast<double>(total.correct) / static_cast<double>(total.count) : 0;
  return r;
}

std::vector<EpochResult> Trainer::run(const Dataset& train, const Dataset& test) {
  std::vector<EpochResult> results;
  for (std::int64_t epoch = 1; epoch <= options_.epochs; ++epoch) {
    auto order = epoch_permutation(train.count, options_.seed, epoch);
    epoch_stats_ = LossStats{};
    epoch_samples_ = 0;
    epoch_seconds_ = 0;
    progress_.begin_epoch(epoch, options_.epochs, train.count);
    DataShard whole{epoch, 0, 0, train.count};
    LossStats stats = train_shard(train, order, whole);
    progress_.end_epoch();

    EpochResult r;
    r.epoch = epoch;
    r.train_loss = stats.loss_sum / static_cast<double>(std::max<std::int64_t>(1, stats.count));
    r.train_accuracy = static_cast<double>(stats.correct) / static_cast<double>(std::max<std::int64_t>(1, stats.count));
    r.seconds = epoch_seconds_;
    r.samples_per_second = static_cast<double>(stats.count) / std::max(epoch_seconds_, 1e-9);
    r.test = evaluate(test);
    results.push_back(r);

    char line[256];
    std::snprintf(
        line, sizeof(line),
        "epoch %lld/%lld  train loss %.4f acc %.2f%%  |  test loss %.4f acc %.2f%%  |  %.0f samples/s, %.1f s",
        static_cast<long long>(epoch), static_cast<long long>(options_.epochs), r.train_loss, 100 * r.train_accuracy,
        r.test.loss, 100 * r.test.accuracy, r.samples_per_second, r.seconds);
    progress_.print(line);
    metrics_.write({{"event", std::string("epoch")},
                    {"epoch", epoch},
                    {"step", step_},
                    {"train_loss", r.train_loss},
                    {"train_accuracy", r.train_accuracy},
                    {"test_loss", r.test.loss},
                    {"test_accuracy", r.test.accuracy},
                    {"samples_per_second", r.samples_per_second},
                    {"seconds", r.seconds},
                    {"lr", static_cast<double>(options_.schedule.at(std::max<std::int64_t>(0, step_ - 1)))}});
  }
  return results;
}

}  // namespace shoal
