#include "worker/progress.h"

#include <unistd.h>

#include "base/error.h"

namespace shoal {

ProgressMode resolve_progress_mode(ProgressSetting setting, std::FILE* out) {
  switch (setting) {
    case ProgressSetting::bar:
      return ProgressMode::bar;
    case ProgressSetting::lines:
      return ProgressMode::lines;
    case ProgressSetting::off:
      return ProgressMode::off;
    case ProgressSetting::auto_detect:
      break;
  }
  return isatty(fileno(out)) ? ProgressMode::bar : ProgressMode::lines;
}

void Progress::begin_epoch(std::int64_t epoch, std::int64_t epochs, std::int64_t samples) {
  epoch_ = epoch;
  epochs_ = epochs;
  samples_ = samples;
  next_line_ = samples / 10;
}

void Progress::update(std::int64_t done, double loss, double accuracy, double rate) {
  if (mode_ == ProgressMode::off) return;
  char text[200];
  std::snprintf(text, sizeof(text), "epoch %lld/%lld %6.1f%%  loss %.4f  acc %6.2f%%  %.0f samples/s",
                static_cast<long long>(epoch_), static_cast<long long>(epochs_),
                samples_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(samples_) : 100.0, loss,
                100.0 * accuracy, rate);
  if (mode_ == ProgressMode::bar) {
    auto now = std::chrono::steady_clock::now();
    if (done < samples_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    std::fprintf(out_, "\r%s\033[K", text);
    std::fflush(out_);
    live_ = true;
  } else if (done >= next_line_ && done < samples_) {
    next_line_ = done + std::max<std::int64_t>(1, samples_ / 10);
    std::fprintf(out_, "%s\n", text);
    std::fflush(out_);
  }
}

void Progress::end_epoch() {
  if (live_) {
    std::fprintf(out_, "\r\033[K");
    std::fflush(out_);
    live_ = false;
  }
}

void Progress::print(const std::string& line) {
  end_epoch();
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

}  // namespace shoal
