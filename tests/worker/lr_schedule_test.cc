// The learning-rate schedule is built once (compute/lr_schedule.h) and the trainer and the
// parameter servers both take it from their job's configuration: they must give the same rate at
// every step, fractional warm-up included (before, the servers truncated 0.5 x 937 = 468.5 warm-up
// steps to 468 while the trainer rounded to 469).
#include <gtest/gtest.h>

#include <cstdint>

#include "comm/partition.h"
#include "compute/lr_schedule.h"
#include "config/config.h"
#include "ps/parameter_server.h"
#include "worker/trainer.h"

namespace shoal {
namespace {

TEST(LrSchedule, EpochsBecomeStepsRoundedToNearest) {
  LrScheduleSettings s{LrScheduleKind::cosine, 0.1f, 0.5, 1.0, 0.1, 0.0};
  EXPECT_EQ(make_lr_schedule(s, 937, 10).warmup_steps, 469);  // 468.5 rounds up
  EXPECT_EQ(make_lr_schedule(s, 937, 10).total_steps, 9370);
  s.warmup_epochs = 0.2;
  EXPECT_EQ(make_lr_schedule(s, 937, 10).warmup_steps, 187);  // 187.4 rounds down
  s.step_epochs = 0.0001;
  EXPECT_EQ(make_lr_schedule(s, 937, 10).step_size, 1);  // never 0
  EXPECT_EQ(make_lr_schedule(s, 0, 0).total_steps, 1);
}

TEST(LrSchedule, TrainerAndServersGiveTheSameRateAtEveryStep) {
  for (const LrScheduleKind kind : {LrScheduleKind::constant, LrScheduleKind::step, LrScheduleKind::cosine}) {
    JobConfig config;
    config.epochs = 10;
    config.optimizer.lr = 0.05f;
    config.lr_schedule = kind;
    config.warmup_epochs = 0.5;
    config.step_epochs = 2.5;
    config.lr_gamma = 0.5;
    config.lr_min = 0.001;
    PartitionTable table;
    table.steps_per_epoch = 937;
    const LrSchedule trainer = trainer_options(config, 1, table.steps_per_epoch).schedule;
    const LrSchedule server = server_options(config, table).schedule;
    EXPECT_EQ(trainer.warmup_steps, 469) << "schedule kind " << static_cast<int>(kind);
    EXPECT_EQ(server.warmup_steps, 469) << "schedule kind " << static_cast<int>(kind);
    int differing = 0;
    for (std::int64_t step = 0; step < table.steps_per_epoch * config.epochs + 10; ++step)
      if (trainer.at(step) != server.at(step)) ++differing;
    EXPECT_EQ(differing, 0) << "schedule kind " << static_cast<int>(kind);
    // Not a flat line: the warm-up ramps, and the schedule then does what its kind says.
    EXPECT_LT(trainer.at(0), trainer.at(468));
    EXPECT_FLOAT_EQ(trainer.at(468), 0.05f);
  }
}

}  // namespace
}  // namespace shoal
