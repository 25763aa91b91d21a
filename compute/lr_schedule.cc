#include "compute/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "base/error.h"

namespace shoal {

LrScheduleKind parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrScheduleKind::constant;
  if (name == "step") return LrScheduleKind::step;
  if (name == "cosine") return LrScheduleKind::cosine;
  SHOAL_THROW(ConfigError, "unknown learning-rate schedule '" << name << "' (expected constant, step or cosine)");
}

float LrSchedule::at(std::int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps)
    return base_lr * static_cast<float>(step + 1) / static_cast<float>(warmup_steps);
  switch (kind) {
    case LrScheduleKind::constant:
      return base_lr;
    case LrScheduleKind::step:
      return base_lr *
             std::pow(gamma, static_cast<float>((step - warmup_steps) / std::max<std::int64_t>(1, step_size)));
    case LrScheduleKind::cosine: {
      std::int64_t span = std::max<std::int64_t>(1, total_steps - warmup_steps);
      double t = std::clamp(static_cast<double>(step - warmup_steps) / static_cast<double>(span), 0.0, 1.0);
      return min_lr + (base_lr - min_lr) * static_cast<float>(0.5 * (1.0 + std::cos(3.141592653589793 * t)));
    }
  }
  return base_lr;
}

LrSchedule make_lr_schedule(const LrScheduleSettings& settings, std::int64_t steps_per_epoch, std::int64_t epochs) {
  const auto steps = [&](double epochs_of) {
    return static_cast<std::int64_t>(std::llround(epochs_of * static_cast<double>(steps_per_epoch)));
  };
  LrSchedule s;
  s.kind = settings.kind;
  s.base_lr = settings.base_lr;
  s.warmup_steps = steps(settings.warmup_epochs);
  s.step_size = std::max<std::int64_t>(1, steps(settings.step_epochs));
  s.gamma = static_cast<float>(settings.gamma);
  s.total_steps = std::max<std::int64_t>(1, steps_per_epoch * epochs);
  s.min_lr = static_cast<float>(settings.min_lr);
  return s;
}

}  // namespace shoal
