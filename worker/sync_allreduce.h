// The synchronous all-reduce strategy: every rank holds the whole model and optimizer state.
// Rank 0's initial parameters and buffers are broadcast. During backward the gradient arena is
// all-reduced in buckets (sync.bucket_mib) in the order backward fills it — the arena is laid
// out in declaration order and backward runs from the last layer, so each bucket is a slice
// from the tail of the arena and nothing is copied — each bucket starting as soon as its last
// gradient is final, while earlier layers still compute. After backward the step waits for
// every bucket and the local optimizer steps. The loss of each rank is scaled by 1 / (samples
// in the global step) and gradients are summed, which is the mean over the global batch even
// when a tail step gives ranks unequal batches.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <vector>

#include "base/log.h"
#include "collective/collective.h"
#include "compute/optimizer.h"
#include "worker/distributed.h"

namespace shoal {

struct SyncOptions {
  std::size_t bucket_bytes = 25u << 20;
  std::chrono::duration<double> timeout{300.0};  // one collective operation
  bool sync_batch_norm = false;
  std::int64_t batch_size = 64;  // per rank
  // Called at least every 10 ms of every wait; throws to end it (the job failed, a stop, a new
  // world in an elastic job).
  std::function<void()> watch;
  // Elastic (sync.elastic): a collective that fails at once (a peer's connection closed) is not
  // the end yet: the watch is polled this long for the coordinator's verdict (a new world).
  std::chrono::duration<double> verdict_wait{0.0};
  // The process's stop flag (SIGTERM). Every step each rank votes it in a one-element
  // all-reduce, launched after the step's last gradient bucket and read at the end of the next
  // step (so it never waits on the step's path); once any rank voted, every rank stops at the
  // same step boundary (WorldStops), after `between_steps` saw it with `stop`. Null: no vote.
  const std::atomic<bool>* stop = nullptr;
  // Called between two steps of an epoch, on every rank: where the epoch stands (rank 0 cuts a
  // checkpoint there when one is due, and when the world stops).
  struct BetweenSteps {
    std::int64_t epoch = 0, position = 0, step = 0;
    std::int64_t from = 0;  // where `so_far` starts (the epoch's start, or where it was resumed)
    LossStats so_far;       // this rank's statistics of the epoch's steps from `from` to `position`
    bool stop = false;
  };
  std::function<void(const BetweenSteps&)> between_steps;
};

class SyncAllReduceStrategy final : public DistributedStrategy {
 public:
  SyncAllReduceStrategy(Backend& backend, Model& model, Optimizer optimizer, Collective& collective, Logger log,
                        SyncOptions options);
  ~SyncAllReduceStrategy() override;

  // Rank 0's parameters and buffers reach every rank.
  void broadcast_initial_state();
  // Elastic: the world was formed again without a lost rank, or with a rank that joined;
  // `collective` is the new one (it must outlive its use here). Every member takes the state of
  // the most advanced one (parameters, optimizer state, buffers, step, the schedule's scaling, and
  // where the epoch stood), the samples of the steps completed before the change are counted
  // once, the rest of the epoch is planned over the new world, and the learning rate is rescaled
  // (Trainer::rescale_schedule) by the new size over the source's previous one. previous_size and
  // previous_rank: this member's previous world and rank in it (0 and -1 for a rank that joins).
  void adopt(Collective& collective, Trainer& trainer, int previous_size, int previous_rank);
  // Rank 0's initial state, unless this rank joined a running job (adopt() came first).
  void start() override {
    if (!adopted_) broadcast_initial_state();
  }

  // Between tasks (no collective in flight): the watch, so that an elastic world that changed
  // while this rank was not in a collective (waiting for the next epoch, say) is re-formed now.
  void before_task() override {
    if (options_.watch) options_.watch();
  }
  bool done_by_the_world(bool evaluate, std::int64_t epoch) const override {
    return evaluate ? 2 * epoch <= stage_ : epoch < epoch_;
  }
  void gradients_ready(Model& model, const std::vector<Parameter*>& params) override;
  void end_step(Model& model, std::int64_t step, float lr) override;
  float loss_scale(std::int64_t samples) const override;
  std::int64_t sample_offset() const override { return sample_offset_; }
  SumAcrossRanks batch_norm_sum() override;

  LossStats train(Trainer& trainer, const DataSource& data, const std::vector<std::int64_t>& order,
                  const DataShard& shard) override;
  EvalResult evaluate(Trainer& trainer, const DataSource& test) override;
  void leave() override;
  OptimizerState* optimizer_state() override { return &local_->state(); }
  const Optimizer* optimizer() const override { return &local_->optimizer(); }
  std::uint64_t clock() const override { return clock_; }
  std::string describe() const override;

  // A checkpoint of a sync job cut mid-epoch: the next train() of `epoch` goes on from
  // `position` (the samples before it were trained, and are reported, before the cut).
  void resume_within(std::int64_t epoch, std::int64_t position);

  // The global samples of the step about to run (train() sets it; tests may too).
  void set_global_step(std::int64_t samples, std::int64_t offset) {
    global_samples_ = samples;
    sample_offset_ = offset;
  }

 private:
  struct Bucket {
    std::int64_t begin = 0, end = 0;  // elements of the gradient arena
    WorkHandle work;
  };
  void launch_ready();
  // Between two steps of train(): the hook, and the world's agreement to stop.
  void between_steps(const Trainer& trainer);
  void wait(Work& work);
  void wait_all();
  // A collective failed at once: waits (polling the watch) for the verdict, else rethrows.
  [[noreturn]] void await_verdict();
  // Runs an operation that blocks in the collective, with await_verdict on its failure.
  template <typename Op>
  auto guarded(Op op) -> decltype(op());

  Backend& backend_;
  Model& model_;
  Collective* collective_;
  Logger log_;
  SyncOptions options_;
  std::unique_ptr<LocalStrategy> local_;
  std::vector<Bucket> buckets_;  // from the tail of the arena to its head: backward's order
  std::size_t launched_ = 0;
  std::int64_t ready_from_ = 0;
  std::int64_t global_samples_ = 0, sample_offset_ = 0;
  std::uint64_t clock_ = 0;
  // Where the epoch being trained stands: its epoch (-1: none), its end, the position the current
  // plan started from, and the position after the last completed global step. Statistics of
  // earlier plans (before a re-formed world) and of the current one.
  std::int64_t epoch_ = -1, shard_end_ = 0, segment_from_ = 0, position_ = 0;
  std::int64_t epoch_from_ = 0;  // where earlier_ + segment_ start: the epoch's start, or a resumed cut
  LossStats earlier_, segment_;
  bool resume_ = false;  // adopt(): the next train() of epoch_ goes on from position_
  bool adopted_ = false;
  // How far this rank's state is, in the coordinator's stages: 2(e-1) training epoch e, 2e-1
  // trained it (the whole plan), 2e evaluated it; -1 nothing yet. adopt() takes the source's.
  std::int64_t stage_ = -1;
  // The stop vote: its one element, the all-reduce in flight, and whether the world agreed.
  std::vector<float> vote_ = std::vector<float>(1, 0.f);
  WorkHandle vote_work_;
  bool stop_agreed_ = false;
};

}  // namespace shoal
