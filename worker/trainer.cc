#include "worker/trainer.h"

#include <algorithm>

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

// The loader's requests point into the caller's sample lists: whatever way the caller leaves
// (done, stopped, or an exception), no load may outlive them.
struct CancelOnExit {
  BatchLoader& loader;
  ~CancelOnExit() { loader.cancel(); }
};
}  // namespace

TrainerOptions trainer_options(const JobConfig& config, std::uint64_t seed, std::int64_t steps_per_epoch) {
  TrainerOptions o;
  o.epochs = config.epochs;
  o.batch_size = config.batch_size;
  o.eval_batch_size = config.eval_batch_size;
  o.seed = seed;
  o.schedule = make_lr_schedule(config.lr_schedule_settings(), steps_per_epoch, config.epochs);
  o.data_seed = config.seed;
  o.data_threads = config.data.threads;
  o.prefetch = config.data.prefetch;
  o.accumulate = config.accumulate;
  o.label_smoothing = static_cast<float>(config.label_smoothing);
  o.clip_norm = config.optimizer.clip_norm;
  return o;
}

Trainer::Trainer(Backend& backend, Model& model, Strategy& strategy, TrainerOptions options, Logger log,
                 Progress& progress, MetricsWriter& metrics)
    : backend_(backend),
      model_(model),
      strategy_(strategy),
      options_(options),
      log_(std::move(log)),
      progress_(progress),
      metrics_(metrics) {
  // Evaluation keeps every layer's output of a batch: bound it to about 512 MiB (resnet18 at
  // 224x224 holds 20 MiB of outputs a sample; cnn at 28x28 0.3 MiB, so its 1,000 stay).
  const std::int64_t per_sample = std::max<std::int64_t>(1, model_.activation_floats_per_sample() * 4);
  options_.eval_batch_size =
      std::clamp<std::int64_t>((std::int64_t{512} << 20) / per_sample, 1, std::max<std::int64_t>(1, options_.eval_batch_size));
}

Trainer::~Trainer() {
  // The loaders' threads end before the buffers and sources they write into.
  loader_.reset();
  inline_loader_.reset();
}

BatchLoader& Trainer::loader_for(const DataSource& data) {
  const bool threads = data.decodes() && options_.data_threads > 0;
  std::unique_ptr<BatchLoader>& loader = threads ? loader_ : inline_loader_;
  if (!loader) {
    BatchLoader::Allocate allocate;
    if (backend_.device().kind == DeviceKind::cpu) {
      allocate = [this](const Shape& s, DType t) { return backend_.allocate(s, t); };
    } else {
      allocate = [this](const Shape& s, DType t) { return backend_.allocate_host(s, t); };  // pinned
    }
    loader = std::make_unique<BatchLoader>(threads ? options_.data_threads : 0, options_.prefetch, allocate);
  }
  return *loader;
}

void Trainer::wait_for_upload() {
  if (uploaded_) uploaded_->wait();  // the batch's pinned buffer may go back to the loader
  uploaded_.reset();
}

void Trainer::use_batch(const BatchLoader::Batch& batch) {
  if (backend_.device().kind == DeviceKind::cpu) {
    x_ = batch.x;
    y_ = batch.y;
    return;
  }
  // A device: copy up asynchronously into one of two device batches, so the host loads batch
  // i + 1 while the device still runs the backward pass of batch i.
  Staging& s = staging_[slot_];
  slot_ ^= 1;
  if (!s.device_x.defined() || !(s.device_x.shape() == batch.x.shape())) {
    s.device_x = backend_.allocate(batch.x.shape());
    s.device_y = backend_.allocate(batch.y.shape(), DType::i32);
  }
  backend_.copy_from_host_async(batch.x.raw(), s.device_x);
  uploaded_ = backend_.copy_from_host_async(batch.y.raw(), s.device_y);
  x_ = s.device_x;
  y_ = s.device_y;
}

LossStats Trainer::step_on(const BatchLoader::Batch& batch, bool closes_step, std::int64_t step_samples) {
  if (batch.count == 0) {  // every sample of it was bad and skipped
    if (closes_step && in_step_) close_step(false);
    return LossStats{};
  }
  use_batch(batch);
  if (!in_step_) {
    strategy_.begin_step(model_, step_);
    in_step_ = true;
  }
  std::uint64_t seed = hash_combine(options_.seed, 0x44524f50ULL + static_cast<std::uint64_t>(step_));
  if (micro_ > 0) seed = hash_combine(seed, static_cast<std::uint64_t>(micro_));  // dropout masks per micro-batch
  LayerContext ctx{backend_, true, seed, strategy_.batch_norm_sum(), strategy_.sample_offset()};
  const Tensor& logits = model_.forward(ctx, x_);
  if (!dlogits_.defined() || !(dlogits_.shape() == logits.shape())) dlogits_ = backend_.allocate(logits.shape());
  float scale = strategy_.loss_scale(batch.count);
  // Accumulating: each micro-batch's share of the mean over the whole step's samples.
  if (options_.accumulate > 1)
    scale *= static_cast<float>(batch.count) / static_cast<float>(std::max<std::int64_t>(1, step_samples));
  LossStats stats = backend_.softmax_cross_entropy(logits, y_, &dlogits_, scale, options_.label_smoothing);
  SHOAL_REQUIRE(std::isfinite(stats.loss_sum), DivergedError,
                "training diverged at step " << step_ << " (loss is not finite); lower optimizer.lr");
  // Gradients go to the strategy as backward produces them (overlapping communication) unless
  // they must first be summed with earlier micro-batches' or clipped as a whole.
  const bool hold = !closes_step || micro_ > 0 || (options_.clip_norm > 0 && strategy_.sends_raw_gradients());
  if (hold) {
    model_.backward(ctx, dlogits_);
  } else {
    model_.backward(ctx, dlogits_,
                    [&](const std::vector<Parameter*>& ready) { strategy_.gradients_ready(model_, ready); });
  }
  if (!closes_step) {
    Tensor& grads = model_.params().grads();
    if (!grad_acc_.defined() || grad_acc_.numel() != grads.numel()) grad_acc_ = backend_.allocate(grads.shape());
    if (micro_ == 0) {
      backend_.copy(grads, grad_acc_);
    } else {
      backend_.axpy(1.f, grads, grad_acc_);
    }
    ++micro_;
    return stats;
  }
  close_step(true);
  return stats;
}

void Trainer::close_step(bool with_current) {
  Tensor& grads = model_.params().grads();
  if (micro_ > 0) {
    if (with_current) {
      backend_.axpy(1.f, grad_acc_, grads);
    } else {
      backend_.copy(grad_acc_, grads);
    }
  }
  if (options_.clip_norm > 0 && strategy_.sends_raw_gradients()) clip_by_global_norm(backend_, grads, options_.clip_norm);
  micro_ = 0;
  in_step_ = false;
  strategy_.end_step(model_, step_, lr_at(step_));
  ++step_;
}

LossStats Trainer::train_batch(const DataSource& data, std::span<const std::int64_t> samples, std::int64_t epoch) {
  return train_batches(data, epoch, {samples});
}

void Trainer::begin_epoch_totals() {
  epoch_stats_ = LossStats{};
  epoch_samples_ = 0;
  epoch_seconds_ = epoch_wait_seconds_ = 0;
  epoch_skipped_ = 0;
}

LossStats Trainer::train_batches(const DataSource& data, std::int64_t epoch,
                                 const std::vector<std::span<const std::int64_t>>& batches,
                                 const std::function<void(std::size_t)>& before_step, LossStats* running) {
  BatchLoader& loader = loader_for(data);
  std::vector<BatchLoader::Request> requests;
  requests.reserve(batches.size());
  for (const auto& b : batches) requests.push_back({&data, b, SampleContext{true, options_.data_seed, epoch}});
  loader.start(std::move(requests));
  CancelOnExit cancel{loader};
  LossStats total;
  micro_ = 0;  // a step left open by an exception is abandoned
  in_step_ = false;
  const std::size_t k = static_cast<std::size_t>(std::max<std::int64_t>(1, options_.accumulate));
  for (std::size_t i = 0; i < batches.size() && !stopped(); ++i) {
    auto start = std::chrono::steady_clock::now();
    wait_for_upload();
    BatchLoader::Batch batch = loader.next();
    if (before_step) before_step(i);
    // Steps of k micro-batches from the first batch on; the last step may have fewer.
    const std::size_t group = i / k * k, group_end = std::min(batches.size(), group + k);
    std::int64_t step_samples = 0;
    for (std::size_t j = group; j < group_end; ++j) step_samples += static_cast<std::int64_t>(batches[j].size());
    LossStats s = step_on(batch, i + 1 == group_end, step_samples);
    epoch_seconds_ += seconds_since(start);
    epoch_wait_seconds_ += batch.wait_seconds;
    total_wait_seconds_ += batch.wait_seconds;
    epoch_skipped_ += batch.skipped;
    total.loss_sum += s.loss_sum;
    total.correct += s.correct;
    total.count += s.count;
    if (running != nullptr) *running = total;
    epoch_stats_.loss_sum += s.loss_sum;
    epoch_stats_.correct += s.correct;
    epoch_stats_.count += s.count;
    epoch_samples_ += s.count;
    if (epoch_stats_.count > 0)
      progress_.update(epoch_samples_, epoch_stats_.loss_sum / static_cast<double>(epoch_stats_.count),
                       static_cast<double>(epoch_stats_.correct) / static_cast<double>(epoch_stats_.count),
                       static_cast<double>(epoch_samples_) / std::max(epoch_seconds_, 1e-9));
  }
  if (in_step_ && micro_ > 0) close_step(false);  // stopped inside a step: apply what it has
  wait_for_upload();
  return total;
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

LossStats Trainer::train_shard(const DataSource& data, const std::vector<std::int64_t>& order,
                               const DataShard& shard) {
  std::vector<std::span<const std::int64_t>> batches;
  for (std::int64_t begin = shard.begin; begin < shard.end; begin += options_.batch_size) {
    std::int64_t end = std::min(shard.end, begin + options_.batch_size);
    batches.emplace_back(order.data() + begin, static_cast<std::size_t>(end - begin));
  }
  return train_batches(data, shard.epoch, batches);
}

EvalResult Trainer::evaluate(const DataSource& data) { return evaluate(data, 0, data.count()); }

EvalResult Trainer::evaluate(const DataSource& data, std::int64_t first, std::int64_t last) {
  LayerContext ctx{backend_, false, 0};
  LossStats total;
  std::vector<std::int64_t> indices(static_cast<std::size_t>(std::max<std::int64_t>(0, last - first)));
  for (std::int64_t i = first; i < last; ++i) indices[static_cast<std::size_t>(i - first)] = i;
  std::vector<BatchLoader::Request> requests;
  for (std::int64_t begin = first; begin < last; begin += options_.eval_batch_size) {
    std::int64_t end = std::min(last, begin + options_.eval_batch_size);
    requests.push_back({&data, std::span<const std::int64_t>(indices.data() + (begin - first), static_cast<std::size_t>(end - begin)),
                        SampleContext{false, options_.data_seed, 0}});
  }
  BatchLoader& loader = loader_for(data);
  const std::size_t n = requests.size();
  loader.start(std::move(requests));
  CancelOnExit cancel{loader};
  for (std::size_t i = 0; i < n && !stopped(); ++i) {
    wait_for_upload();
    BatchLoader::Batch batch = loader.next();
    if (batch.count == 0) continue;
    use_batch(batch);
    LossStats s = backend_.softmax_cross_entropy(model_.forward(ctx, x_), y_, nullptr, 1.f);
    total.loss_sum += s.loss_sum;
    total.correct += s.correct;
    total.count += s.count;
  }
  wait_for_upload();
  EvalResult r;
  r.samples = total.count;
  r.loss = total.count > 0 ? total.loss_sum / static_cast<double>(total.count) : 0;
  r.accuracy = total.count > 0 ? static_cast<double>(total.correct) / static_cast<double>(total.count) : 0;
  return r;
}

std::vector<EpochResult> Trainer::run(const DataSource& train, const DataSource& test) {
  std::vector<EpochResult> results;
  for (std::int64_t epoch = 1; epoch <= options_.epochs; ++epoch) {
    auto order = train.epoch_order(options_.seed, epoch);
    begin_epoch_totals();
    progress_.begin_epoch(epoch, options_.epochs, train.count());
    DataShard whole{epoch, 0, 0, train.count()};
    LossStats stats = train_shard(train, order, whole);
    progress_.end_epoch();

    EpochResult r;
    r.epoch = epoch;
    r.train_loss = stats.loss_sum / static_cast<double>(std::max<std::int64_t>(1, stats.count));
    r.train_accuracy = static_cast<double>(stats.correct) / static_cast<double>(std::max<std::int64_t>(1, stats.count));
    r.seconds = epoch_seconds_;
    r.samples_per_second = static_cast<double>(stats.count) / std::max(epoch_seconds_, 1e-9);
    r.data_wait_seconds = epoch_wait_seconds_;
    r.skipped = epoch_skipped_;
    r.test = evaluate(test);
    results.push_back(r);

    char line[320];
    std::snprintf(line, sizeof(line),
                  "epoch %lld/%lld  train loss %.4f acc %.2f%%  |  test loss %.4f acc %.2f%%  |  %.0f samples/s, %.1f "
                  "s, data wait %.1f%%%s",
                  static_cast<long long>(epoch), static_cast<long long>(options_.epochs), r.train_loss,
                  100 * r.train_accuracy, r.test.loss, 100 * r.test.accuracy, r.samples_per_second, r.seconds,
                  100 * r.data_wait_seconds / std::max(r.seconds, 1e-9),
                  r.skipped > 0 ? (", " + std::to_string(r.skipped) + " bad samples skipped").c_str() : "");
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
                    {"data_wait_seconds", r.data_wait_seconds},
                    {"skipped_samples", r.skipped},
                    {"lr", static_cast<double>(options_.schedule.at(std::max<std::int64_t>(0, step_ - 1)))}});
  }
  return results;
}

}  // namespace shoal
