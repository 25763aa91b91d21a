#include "worker/sync_allreduce.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace shoal {
namespace {

std::span<float> span_of(Tensor& t, std::int64_t begin, std::int64_t end) {
  return std::span<float>(static_cast<float*>(t.raw()) + begin, static_cast<std::size_t>(end - begin));
}

}  // namespace

SyncAllReduceStrategy::SyncAllReduceStrategy(Backend& backend, Model& model, Optimizer optimizer,
                                             Collective& collective, Logger log, SyncOptions options)
    : backend_(backend),
      model_(model),
      collective_(collective),
      log_(std::move(log)),
      options_(std::move(options)),
      local_(std::make_unique<LocalStrategy>(backend, model, std::move(optimizer))) {
  const std::int64_t total = model.params().parameter_count();
  const std::int64_t per_bucket = std::max<std::int64_t>(1, static_cast<std::int64_t>(options_.bucket_bytes / 4));
  for (std::int64_t end = total; end > 0; end -= per_bucket)
    buckets_.push_back(Bucket{std::max<std::int64_t>(0, end - per_bucket), end, nullptr});
  ready_from_ = total;
}

SyncAllReduceStrategy::~SyncAllReduceStrategy() = default;

std::string SyncAllReduceStrategy::describe() const {
  std::ostringstream out;
  out << "all-reduce over " << collective_.describe() << ", " << buckets_.size() << " bucket(s) of up to "
      << static_cast<double>(options_.bucket_bytes) / (1 << 20) << " MiB, batch norm "
      << (options_.sync_batch_norm ? "sync" : "local");
  return out.str();
}

void SyncAllReduceStrategy::wait(Work& work) { work.wait(options_.timeout, options_.watch); }

void SyncAllReduceStrategy::broadcast_initial_state() {
  auto& params = model_.params();
  auto values = collective_.broadcast(span_of(params.values(), 0, params.values().numel()), 0, "broadcast of parameters");
  WorkHandle buffers;
  if (params.buffer_values().numel() > 0)
    buffers = collective_.broadcast(span_of(params.buffer_values(), 0, params.buffer_values().numel()), 0,
                                    "broadcast of buffers");
  wait(*values);
  if (buffers) wait(*buffers);
}

float SyncAllReduceStrategy::loss_scale(std::int64_t samples) const {
  const std::int64_t global = global_samples_ > 0 ? global_samples_ : samples * collective_.size();
  return 1.f / static_cast<float>(global);
}

SumAcrossRanks SyncAllReduceStrategy::batch_norm_sum() {
  if (!options_.sync_batch_norm) return {};
  return [this](std::span<float> values) {
    collective_.all_reduce_now(values, ReduceOp::sum, options_.timeout, "all-reduce of batch-norm statistics",
                               options_.watch);
  };
}

void SyncAllReduceStrategy::launch_ready() {
  Tensor& grads = model_.params().grads();
  while (launched_ < buckets_.size() && buckets_[launched_].begin >= ready_from_) {
    Bucket& b = buckets_[launched_];
    b.work = collective_.all_reduce(span_of(grads, b.begin, b.end), ReduceOp::sum,
                                    "all-reduce of gradient bucket " + std::to_string(launched_) + " (step " +
                                        std::to_string(clock_) + ")");
    ++launched_;
  }
}

void SyncAllReduceStrategy::gradients_ready(Model& /*model*/, const std::vector<Parameter*>& params) {
  for (const Parameter* p : params) ready_from_ = std::min(ready_from_, p->offset);
  launch_ready();
}

void SyncAllReduceStrategy::wait_all() {
  std::exception_ptr first;
  for (std::size_t i = 0; i < launched_; ++i) {
    try {
      if (buckets_[i].work) wait(*buckets_[i].work);
    } catch (...) {
      // The rest cannot succeed either: the ranks no longer agree. Give up on them at once.
      if (!first) first = std::current_exception();
      collective_.abort(failure_of(first).message);
    }
    buckets_[i].work.reset();
  }
  launched_ = 0;
  ready_from_ = model_.params().parameter_count();
  if (first) std::rethrow_exception(first);
}

void SyncAllReduceStrategy::end_step(Model& model, std::int64_t step, float lr) {
  ready_from_ = 0;  // every gradient is final
  launch_ready();
  wait_all();
  local_->end_step(model, step, lr);
  ++clock_;
}

LossStats SyncAllReduceStrategy::train(Trainer& trainer, const Dataset& data, const std::vector<std::int64_t>& order,
                                       const DataShard& shard) {
  LossStats total;
  for (const RankStep& s :
       plan_rank_steps(shard.begin, shard.end, options_.batch_size, collective_.size(), collective_.rank())) {
    if (trainer.stopped()) break;
    set_global_step(s.global, s.offset);
    LossStats b = trainer.train_batch(
        data, std::span<const std::int64_t>(order.data() + s.begin, static_cast<std::size_t>(s.end - s.begin)));
    total.loss_sum += b.loss_sum;
    total.correct += b.correct;
    total.count += b.count;
  }
  set_global_step(0, 0);
  return total;
}

EvalResult SyncAllReduceStrategy::evaluate(Trainer& trainer, const Dataset& test) {
  auto& params = model_.params();
  // Local batch norm: each rank's running statistics saw only its own batches; evaluate with
  // their average (identical on every rank, as the parameters are).
  if (!options_.sync_batch_norm && params.buffer_values().numel() > 0) {
    Tensor& buffers = params.buffer_values();
    collective_.all_reduce_now(span_of(buffers, 0, buffers.numel()), ReduceOp::average, options_.timeout,
                               "all-reduce of batch-norm running statistics", options_.watch);
  }
  const std::int64_t w = collective_.size(), r = collective_.rank();
  EvalResult mine = trainer.evaluate(test, test.count * r / w, test.count * (r + 1) / w);
  std::vector<float> sums{static_cast<float>(mine.loss * static_cast<double>(mine.samples)),
                          static_cast<float>(mine.accuracy * static_cast<double>(mine.samples) + 0.5),
                          static_cast<float>(mine.samples)};
  collective_.all_reduce_now(sums, ReduceOp::sum, options_.timeout, "all-reduce of evaluation results",
                             options_.watch);
  EvalResult all;
  all.samples = static_cast<std::int64_t>(sums[2] + 0.5f);
  all.loss = all.samples > 0 ? sums[0] / static_cast<double>(all.samples) : 0;
  all.accuracy = all.samples > 0 ? std::floor(sums[1]) / static_cast<double>(all.samples) : 0;
  return all;
}

void SyncAllReduceStrategy::leave() {
  // Nothing to tell peers: a rank that leaves ends a sync job (the coordinator says so to
  // the others). Whatever is still in flight cannot complete.
  if (launched_ > 0) collective_.abort("this rank left the job");
}

}  // namespace shoal
