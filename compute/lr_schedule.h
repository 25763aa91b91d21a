// The learning-rate schedule: one definition, used by the trainer (local and sync workers) and by
// the parameter servers (async jobs, where the optimizer runs on the server), so every process of
// a job computes the same rate for the same step. The job's settings are in epochs; the schedule
// runs in steps, converted once here (make_lr_schedule).
#pragma once

#include <cstdint>
#include <string>

namespace shoal {

enum class LrScheduleKind { constant, step, cosine };
LrScheduleKind parse_lr_schedule(const std::string& name);  // throws ConfigError

// A learning rate as a function of the global step: linear warm-up from base/warmup_steps to
// base, then constant, step decay (times gamma every step_size steps) or cosine to min_lr at
// total_steps.
struct LrSchedule {
  LrScheduleKind kind = LrScheduleKind::constant;
  float base_lr = 0.01f;
  std::int64_t warmup_steps = 0;
  std::int64_t step_size = 1;
  float gamma = 0.1f;
  std::int64_t total_steps = 1;
  float min_lr = 0;

  float at(std::int64_t step) const;  // step is 0-based
};

// The job's schedule settings, in epochs (train.lr_schedule, train.warmup_epochs, ...).
struct LrScheduleSettings {
  LrScheduleKind kind = LrScheduleKind::constant;
  float base_lr = 0.01f;
  double warmup_epochs = 0;
  double step_epochs = 1;
  double gamma = 0.1;
  double min_lr = 0;
};

// The schedule in steps for a job of `epochs` epochs of `steps_per_epoch` steps: epochs convert to
// steps rounded to nearest (warm-up 0.5 epoch of 937 steps is 469 steps), the step size and the
// total are at least 1.
LrSchedule make_lr_schedule(const LrScheduleSettings& settings, std::int64_t steps_per_epoch, std::int64_t epochs);

}  // namespace shoal
