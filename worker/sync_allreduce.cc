#include "worker/sync_allreduce.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>
#include <thread>

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
      collective_(&collective),
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
  out << "all-reduce over " << collective_->describe() << ", " << buckets_.size() << " bucket(s) of up to "
      << static_cast<double>(options_.bucket_bytes) / (1 << 20) << " MiB, batch norm "
      << (options_.sync_batch_norm ? "sync" : "local");
  return out.str();
}

void SyncAllReduceStrategy::await_verdict() {
  std::exception_ptr error = std::current_exception();
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::nanoseconds>(options_.verdict_wait);
  while (options_.watch && std::chrono::steady_clock::now() < deadline) {
    options_.watch();  // throws the verdict: a new world, the job's end
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::rethrow_exception(error);
}

template <typename Op>
auto SyncAllReduceStrategy::guarded(Op op) -> decltype(op()) {
  try {
    return op();
  } catch (const CollectiveError&) {
    if (options_.verdict_wait.count() <= 0) throw;
    await_verdict();
  }
}

void SyncAllReduceStrategy::wait(Work& work) {
  guarded([&] { work.wait(options_.timeout, options_.watch); });
}

void SyncAllReduceStrategy::broadcast_initial_state() {
  auto& params = model_.params();
  auto values =
      collective_->broadcast(span_of(params.values(), 0, params.values().numel()), 0, "broadcast of parameters");
  WorkHandle buffers;
  if (params.buffer_values().numel() > 0)
    buffers = collective_->broadcast(span_of(params.buffer_values(), 0, params.buffer_values().numel()), 0,
                                     "broadcast of buffers");
  wait(*values);
  if (buffers) wait(*buffers);
}

float SyncAllReduceStrategy::loss_scale(std::int64_t samples) const {
  const std::int64_t global = global_samples_ > 0 ? global_samples_ : samples * collective_->size();
  return 1.f / static_cast<float>(global);
}

SumAcrossRanks SyncAllReduceStrategy::batch_norm_sum() {
  if (!options_.sync_batch_norm) return {};
  return [this](std::span<float> values) {
    guarded([&] {
      collective_->all_reduce_now(values, ReduceOp::sum, options_.timeout, "all-reduce of batch-norm statistics",
                                  options_.watch);
    });
  };
}

void SyncAllReduceStrategy::launch_ready() {
  Tensor& grads = model_.params().grads();
  while (launched_ < buckets_.size() && buckets_[launched_].begin >= ready_from_) {
    Bucket& b = buckets_[launched_];
    b.work = collective_->all_reduce(
        span_of(grads, b.begin, b.end), ReduceOp::sum,
        "all-reduce of gradient bucket " + std::to_string(launched_) + " (step " + std::to_string(clock_) + ")");
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
      collective_->abort(failure_of(first).message);
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
  if (options_.stop != nullptr) {
    // The previous step's vote (issued before this step's buckets, so it is in by now), then
    // this step's: after the last bucket, in the same order on every rank.
    if (vote_work_) {
      guarded([&] { wait(*vote_work_); });
      vote_work_.reset();
      if (vote_[0] > 0.5f) stop_agreed_ = true;
    }
    vote_[0] = options_.stop->load() ? 1.f : 0.f;
    vote_work_ = collective_->all_reduce(vote_, ReduceOp::sum,
                                         "all-reduce of the stop vote (step " + std::to_string(clock_) + ")");
  }
  wait_all();
  local_->end_step(model, step, lr);
  ++clock_;
}

namespace {
void add(LossStats& to, const LossStats& s) {
  to.loss_sum += s.loss_sum;
  to.correct += s.correct;
  to.count += s.count;
}
}  // namespace

void SyncAllReduceStrategy::resume_within(std::int64_t epoch, std::int64_t position) {
  epoch_ = epoch;
  position_ = epoch_from_ = position;
  earlier_ = LossStats{};
  segment_ = LossStats{};
  stage_ = 2 * (epoch - 1);
  resume_ = true;
}

void SyncAllReduceStrategy::between_steps(const Trainer& trainer) {
  if (!trainer.at_step_boundary()) return;
  if (options_.between_steps) {
    SyncOptions::BetweenSteps at{epoch_, position_, trainer.step(), epoch_from_, earlier_, stop_agreed_};
    add(at.so_far, segment_);
    options_.between_steps(at);
  }
  if (stop_agreed_) throw WorldStops{};
}

LossStats SyncAllReduceStrategy::train(Trainer& trainer, const DataSource& data, const std::vector<std::int64_t>& order,
                                       const DataShard& shard) {
  if (!(resume_ && shard.epoch == epoch_)) {  // a new epoch (not the rest of one after a new world)
    epoch_ = shard.epoch;
    position_ = epoch_from_ = shard.begin;
    earlier_ = LossStats{};
  }
  resume_ = false;
  stage_ = std::max(stage_, 2 * (epoch_ - 1));
  shard_end_ = shard.end;
  segment_from_ = position_;
  segment_ = LossStats{};
  // Each step's position moves on only once the step is trained: a stop leaves position_ at the
  // first step not taken.
  const std::vector<RankStep> steps =
      plan_rank_steps(position_, shard.end, options_.batch_size, collective_->size(), collective_->rank());
  std::vector<std::span<const std::int64_t>> batches;
  for (const RankStep& s : steps)
    batches.emplace_back(order.data() + s.begin, static_cast<std::size_t>(s.end - s.begin));
  std::size_t done = 0;
  trainer.train_batches(
      data, shard.epoch, batches,
      [&](std::size_t i) {
        if (i > 0) position_ += steps[i - 1].global;  // step i - 1 was trained
        // Between two steps (or, when the world agreed to stop at the end of the last epoch's
        // last step, before this epoch's first): the hook and the stop.
        if (i > 0 || stop_agreed_) between_steps(trainer);
        set_global_step(steps[i].global, steps[i].offset);
        done = i + 1;
      },
      &segment_);
  if (done > 0) position_ += steps[done - 1].global;  // a step begun is a step trained
  set_global_step(0, 0);
  if (position_ >= shard_end_) stage_ = std::max(stage_, 2 * epoch_ - 1);  // the whole epoch is trained
  LossStats total = earlier_;
  add(total, segment_);
  return total;  // epoch_ and position_ stay: a new world may find this member at the epoch's end
}

void SyncAllReduceStrategy::adopt(Collective& collective, Trainer& trainer, int previous_size, int previous_rank) {
  for (auto& b : buckets_) b.work.reset();  // issued on the old world: never completed
  vote_work_.reset();
  launched_ = 0;
  ready_from_ = model_.params().parameter_count();
  collective_ = &collective;
  adopted_ = true;
  const bool joiner = previous_size <= 0;
  // Of the steps this member completed in its previous world (this epoch, since the plan it
  // trained from): its own samples. Counted up to `upto`, the position the source reached.
  auto own_share = [&](std::int64_t upto) {
    std::int64_t n = 0, at = segment_from_;
    if (joiner || epoch_ < 0) return n;
    for (const RankStep& s :
         plan_rank_steps(segment_from_, shard_end_, options_.batch_size, previous_size, previous_rank)) {
      if (at + s.global > upto) break;
      n += s.end - s.begin;
      at += s.global;
    }
    return n;
  };
  // Every member's step, gathered by a sum (exact below 2^24 steps). The most advanced member
  // (the most steps: ranks differ by at most the step the loss cut short) is the source; the
  // lowest rank among equals. A joiner has not trained: it is never ahead of a survivor.
  // With equal steps, the furthest stage: a member that evaluated the last epoch is ahead of one
  // whose evaluation the change cut short.
  const auto size = static_cast<std::size_t>(collective_->size()), me = static_cast<std::size_t>(collective_->rank());
  std::vector<float> progress(2 * size, 0.f);
  progress[2 * me] = static_cast<float>(joiner ? 0 : trainer.step());
  progress[2 * me + 1] = static_cast<float>(joiner ? -1 : stage_);
  // Every wait watches for another change of the world meanwhile (the caller forms that one).
  guarded([&] {
    collective_->all_reduce_now(progress, ReduceOp::sum, options_.timeout, "all-reduce of the members' steps",
                                options_.watch);
  });
  std::size_t from = 0;
  for (std::size_t r = 1; r < size; ++r)
    if (std::make_pair(progress[2 * r], progress[2 * r + 1]) >
        std::make_pair(progress[2 * from], progress[2 * from + 1]))
      from = r;
  // Its state: parameters, buffers, optimizer slots, then its step, data position, the size of
  // its previous world and its schedule's scaling (bit patterns).
  auto& params = model_.params();
  std::vector<WorkHandle> work;
  work.push_back(collective_->broadcast(span_of(params.values(), 0, params.values().numel()), static_cast<int>(from),
                                        "broadcast of parameters (new world)"));
  if (params.buffer_values().numel() > 0)
    work.push_back(collective_->broadcast(span_of(params.buffer_values(), 0, params.buffer_values().numel()),
                                          static_cast<int>(from), "broadcast of buffers (new world)"));
  OptimizerState& state = local_->state();
  for (auto& slot : state.slots)
    work.push_back(
        collective_->broadcast(span_of(slot, 0, slot.numel()), static_cast<int>(from), "broadcast of optimizer state"));
  const Trainer::ScheduleScaling scaling = trainer.schedule_scaling();
  struct Meta {
    std::int64_t step, epoch, position, updates, previous_size, rescaled_at, segment_from, stage;
    double lr_scale, rate, schedule_from;
  } meta_values{trainer.step(),   epoch_,       position_,     static_cast<std::int64_t>(state.updates),
                previous_size,    scaling.at,   segment_from_, stage_,
                scaling.lr_scale, scaling.rate, scaling.from};
  static_assert(sizeof(Meta) % sizeof(float) == 0);
  std::vector<float> meta(sizeof(Meta) / sizeof(float));
  std::memcpy(meta.data(), &meta_values, sizeof(Meta));
  work.push_back(collective_->broadcast(meta, static_cast<int>(from), "broadcast of the step and the data position"));
  guarded([&] {
    for (auto& w : work) w->wait(options_.timeout, options_.watch);
  });
  const Meta source = [&] {
    Meta m;
    std::memcpy(&m, meta.data(), sizeof(Meta));
    return m;
  }();
  SHOAL_REQUIRE(source.previous_size > 0, ProtocolError,
                "the most advanced member of the new world has no previous world: every member joined");

  // Samples of the steps completed before the change, counted once: each member its own share of
  // them (its last step may have failed here but completed at the source), and the new rank 0
  // the rest, which were the shares of the ranks that are gone (their gradients are in those
  // steps). The shares are summed in 16-bit pieces, exact in float.
  const bool same_epoch = source.epoch >= 0 && source.epoch == epoch_ && !joiner;
  const std::int64_t mine = same_epoch ? own_share(source.position) : 0;
  std::vector<float> shares(3, 0.f);
  for (int piece = 0; piece < 3; ++piece)
    shares[static_cast<std::size_t>(piece)] = static_cast<float>((mine >> (16 * piece)) & 0xFFFF);
  guarded([&] {
    collective_->all_reduce_now(shares, ReduceOp::sum, options_.timeout, "all-reduce of the members' samples",
                                options_.watch);
  });
  std::int64_t counted = 0;
  for (int piece = 2; piece >= 0; --piece)
    counted = (counted << 16) + static_cast<std::int64_t>(shares[static_cast<std::size_t>(piece)]);

  trainer.set_step(source.step);
  trainer.set_schedule_scaling({source.lr_scale, source.rate, source.schedule_from, source.rescaled_at});
  state.updates = static_cast<std::uint64_t>(source.updates);
  clock_ = static_cast<std::uint64_t>(source.step);
  stage_ = source.stage;
  if (same_epoch) {
    const LossStats measured = segment_;
    segment_.count = mine;
    if (collective_->rank() == 0) {
      const std::int64_t lost = std::max<std::int64_t>(0, (source.position - source.segment_from) - counted);
      // Their loss and accuracy went with them: estimated by this member's over the same steps.
      if (measured.count > 0) {
        const double per_sample = static_cast<double>(lost) / static_cast<double>(measured.count);
        segment_.loss_sum += measured.loss_sum * per_sample;
        segment_.correct += static_cast<std::int64_t>(std::llround(static_cast<double>(measured.correct) * per_sample));
      }
      segment_.count += lost;
    }
    add(earlier_, segment_);
    segment_ = LossStats{};
    position_ = source.position;
    resume_ = true;
  } else if (source.epoch >= 0) {
    // The source was mid-epoch while this member was between epochs (it had not started it), or
    // this member has just joined.
    epoch_ = source.epoch;
    position_ = epoch_from_ = source.position;
    earlier_ = LossStats{};
    segment_ = LossStats{};
    resume_ = true;
  }
  trainer.rescale_schedule(static_cast<double>(collective_->size()) / static_cast<double>(source.previous_size));
}

EvalResult SyncAllReduceStrategy::evaluate(Trainer& trainer, const DataSource& test) {
  auto& params = model_.params();
  // Local batch norm: each rank's running statistics saw only its own batches; evaluate with
  // their average (identical on every rank, as the parameters are).
  if (!options_.sync_batch_norm && params.buffer_values().numel() > 0) {
    Tensor& buffers = params.buffer_values();
    guarded([&] {
      collective_->all_reduce_now(span_of(buffers, 0, buffers.numel()), ReduceOp::average, options_.timeout,
                                  "all-reduce of batch-norm running statistics", options_.watch);
    });
  }
  const std::int64_t w = collective_->size(), r = collective_->rank();
  EvalResult mine = trainer.evaluate(test, test.count() * r / w, test.count() * (r + 1) / w);
  std::vector<float> sums{static_cast<float>(mine.loss * static_cast<double>(mine.samples)),
                          static_cast<float>(mine.accuracy * static_cast<double>(mine.samples) + 0.5),
                          static_cast<float>(mine.samples)};
  guarded([&] {
    collective_->all_reduce_now(sums, ReduceOp::sum, options_.timeout, "all-reduce of evaluation results",
                                options_.watch);
  });
  stage_ = std::max(stage_, 2 * epoch_);  // the evaluation follows the training of epoch_
  EvalResult all;
  all.samples = static_cast<std::int64_t>(sums[2] + 0.5f);
  all.loss = all.samples > 0 ? sums[0] / static_cast<double>(all.samples) : 0;
  all.accuracy = all.samples > 0 ? std::floor(sums[1]) / static_cast<double>(all.samples) : 0;
  return all;
}

void SyncAllReduceStrategy::leave() {
  // Nothing to tell peers: a rank that leaves ends a sync job (the coordinator says so to
  // the others). Whatever is still in flight cannot complete.
  if (launched_ > 0 || vote_work_) collective_->abort("this rank left the job");
  vote_work_.reset();
}

}  // namespace shoal
