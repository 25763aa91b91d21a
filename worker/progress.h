// Progress display for training: a live, rewritten line on a terminal, or plain lines at
// every tenth of an epoch when the output is a file or pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "config/config.h"

namespace shoal {

enum class ProgressMode { bar, lines, off };
ProgressMode resolve_progress_mode(ProgressSetting setting, std::FILE* out);  // auto looks at isatty

class Progress {
 public:
  Progress(ProgressMode mode, std::FILE* out) : mode_(mode), out_(out) {}
  void begin_epoch(std::int64_t epoch, std::int64_t epochs, std::int64_t samples);
  void update(std::int64_t samples_done, double mean_loss, double accuracy, double samples_per_second);
  void end_epoch();  // clears the live line
  // A whole line that must not be mixed into the live line.
  void print(const std::string& line);

 private:
  ProgressMode mode_;
  std::FILE* out_;
  std::int64_t epoch_ = 0, epochs_ = 0, samples_ = 0, next_line_ = 0;
  std::chrono::steady_clock::time_point last_draw_{};
  bool live_ = false;
};

}  // namespace shoal
