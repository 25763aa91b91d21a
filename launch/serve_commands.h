// The commands that take a trained model out of Shoal: shoal export, predict and serve
// (docs/serving.md).
#pragma once

#include <string>
#include <vector>

#include "base/log.h"
#include "base/process.h"
#include "config/config.h"

namespace shoal {

int export_command(const std::vector<std::string>& args, const Logger& log);
int predict_command(const std::vector<std::string>& args, const Logger& log);
// Runs until `signals` asks it to stop, then drains and returns 0.
int serve_command(std::vector<std::string> args, const SettingsRegistry& registry, const StopSignals& signals,
                  const Logger& log);

}  // namespace shoal
