// `shoal train`: a whole single-process training job from a JobConfig (data, model, backend,
// local optimizer, the training loop), printing progress and the final test accuracy.
#pragma once

#include <vector>

#include "config/config.h"
#include "base/log.h"
#include "worker/trainer.h"

namespace shoal {

struct TrainJobResult {
  std::vector<EpochResult> epochs;
  double final_test_accuracy = 0;
};

TrainJobResult run_train_job(const JobConfig& config, const Logger& log);

}  // namespace shoal
