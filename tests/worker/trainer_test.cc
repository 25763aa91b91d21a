// The training loop in-process on a slice of the real Fashion-MNIST: loss must fall, a fixed
// seed must reproduce the run exactly, and the strategy hooks must fire in order.
#include "worker/trainer.h"
#include "compute/devices/devices.h"

#include <gtest/gtest.h>

#include "data/source.h"
#include "models/model_file.h"

namespace shoal {
namespace {

struct Fixture {
  std::unique_ptr<Backend> backend = make_backend(BackendOptions{Device::cpu(), 2});
  TrainTestData data = load_train_test("idx", "/usr/share/datasets/fashion-mnist", 2048, 1000);
  Normalization norm = compute_normalization(data.train);
};

std::vector<EpochResult> train(Fixture& f, const std::string& model_name, std::uint64_t seed, int epochs,
                               Strategy* override_strategy = nullptr) {
  auto model = build_model(model_name, Shape{1, 28, 28}, 10);
  model->build(*f.backend, seed);
  OptimizerConfig opt;
  opt.lr = 0.05f;
  LocalStrategy local(*f.backend, *model, Optimizer(opt));
  TrainerOptions options;
  options.epochs = epochs;
  options.batch_size = 32;
  options.seed = seed;
  options.schedule.base_lr = opt.lr;
  Progress progress(ProgressMode::off, stdout);
  MetricsWriter metrics;
  Trainer trainer(*f.backend, *model, override_strategy ? *override_strategy : local, options, Logger(), progress,
                  metrics);
  MemorySource train_set(f.data.train, f.norm), test_set(f.data.test, f.norm);
  return trainer.run(train_set, test_set);
}

TEST(Trainer, LossFallsOnRealData) {
  Fixture f;
  auto results = train(f, "cnn", 1, 2);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_LT(results[1].train_loss, 0.9) << "ln(10) = 2.30 at chance";
  EXPECT_LT(results[1].train_loss, results[0].train_loss);
  EXPECT_GT(results[1].test.accuracy, 0.65);
  EXPECT_EQ(results[1].test.samples, 1000);
}

TEST(Trainer, SameSeedSameRunDifferentSeedDifferentRun) {
  Fixture f;
  // Three runs: a slice is enough to show a run repeats bit for bit (and keeps CI short).
  f.data.train.count = 512;
  f.data.train.labels.resize(512);
  f.data.test.count = 256;
  f.data.test.labels.resize(256);
  auto a = train(f, "cnn_bn", 7, 1), b = train(f, "cnn_bn", 7, 1), c = train(f, "cnn_bn", 8, 1);
  EXPECT_EQ(a[0].train_loss, b[0].train_loss);
  EXPECT_EQ(a[0].test.loss, b[0].test.loss);
  EXPECT_NE(a[0].train_loss, c[0].train_loss);
}

// Records the order of hook calls; applies no update, so the loss cannot fall.
class RecordingStrategy final : public Strategy {
 public:
  void begin_step(Model&, std::int64_t step) override { events.push_back("begin " + std::to_string(step)); }
  void gradients_ready(Model&, const std::vector<Parameter*>& ps) override {
    events.push_back("ready " + ps.front()->name);
  }
  void end_step(Model&, std::int64_t step, float) override { events.push_back("end " + std::to_string(step)); }
  std::vector<std::string> events;
};

TEST(Trainer, StrategyHooksFireInOrder) {
  Fixture f;
  f.data.train.count = 64;
  f.data.train.labels.resize(64);
  RecordingStrategy rec;
  train(f, "mlp", 1, 1, &rec);
  // 2 steps x (begin, 3 linear layers ready from the last, end).
  std::vector<std::string> expected = {"begin 0", "ready fc3.weight", "ready fc2.weight", "ready fc1.weight", "end 0",
                                       "begin 1", "ready fc3.weight", "ready fc2.weight", "ready fc1.weight", "end 1"};
  EXPECT_EQ(rec.events, expected);
}

// Elastic sync: a world shrunk from 3 to 2 ranks at step 100 scales the rate by 2/3 and advances
// the schedule 2/3 of a step per step; schedule_position() is what a checkpoint records, and a
// trainer resumed at that position with the configured rate (the full world again) goes on from
// the same point of the schedule, not from its step.
TEST(Trainer, RescaledScheduleAndItsPositionAfterAResume) {
  Fixture f;
  auto model = build_model("mlp", Shape{1, 28, 28}, 10);
  model->build(*f.backend, 1);
  LocalStrategy local(*f.backend, *model, Optimizer(OptimizerConfig{}));
  TrainerOptions options;
  options.schedule = make_lr_schedule({LrScheduleKind::cosine, 0.1f, 0, 1, 0.1, 0}, 300, 2);  // 600 steps
  Progress progress(ProgressMode::off, stdout);
  MetricsWriter metrics;
  Trainer trainer(*f.backend, *model, local, options, Logger(), progress, metrics);
  EXPECT_EQ(trainer.lr_at(250), options.schedule.at(250)) << "never rescaled: the schedule's own step";
  EXPECT_DOUBLE_EQ(trainer.schedule_position(250), 250);
  trainer.set_step(100);
  trainer.rescale_schedule(2.0 / 3.0);
  EXPECT_DOUBLE_EQ(trainer.schedule_position(400), 100 + 300 * 2.0 / 3.0);
  EXPECT_FLOAT_EQ(trainer.lr_at(400), static_cast<float>(2.0 / 3.0) * options.schedule.at(300));
  // Resumed at step 400 from a checkpoint that recorded position 300, with the full world.
  Trainer resumed(*f.backend, *model, local, options, Logger(), progress, metrics);
  resumed.set_step(400);
  resumed.set_schedule_scaling({1, 1, trainer.schedule_position(400), 400});
  EXPECT_EQ(resumed.lr_at(400), options.schedule.at(300));
  EXPECT_EQ(resumed.lr_at(450), options.schedule.at(350));
}

}  // namespace
}  // namespace shoal
