#include "base/log.h"

#include <unistd.h>

#include <chrono>
#include <ctime>

#include "base/error.h"

namespace shoal {

namespace detail {
std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }
}  // namespace detail

namespace {

std::string host_and_pid() {
  char host[256] = {0};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '?';
  return std::string(host) + ":" + std::to_string(getpid());
}

char level_letter(LogLevel level) {
  switch (level) {
    case LogLevel::debug:
      return 'D';
    case LogLevel::info:
      return 'I';
    case LogLevel::warn:
      return 'W';
    case LogLevel::error:
      return 'E';
    default:
      return '?';
  }
}

}  // namespace

LogLevel parse_log_level(std::string_view name) {
  if (name == "debug") return LogLevel::debug;
  if (name == "info") return LogLevel::info;
  if (name == "warn") return LogLevel::warn;
  if (name == "error") return LogLevel::error;
  if (name == "off") return LogLevel::off;
  SHOAL_THROW(ConfigError, "unknown log level '" << name << "' (expected debug, info, warn, error or off)");
}

void LogSink::write_line(std::string_view line) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::fwrite(line.data(), 1, line.size(), out_);
  std::fputc('\n', out_);
  std::fflush(out_);
}

Logger::Logger() : Logger("shoal", LogLevel::info) {}

Logger::Logger(std::string role, LogLevel level, std::shared_ptr<LogSink> sink)
    : prefix_(role + " " + host_and_pid()),
      level_(level),
      sink_(sink ? std::move(sink) : std::make_shared<LogSink>()) {}

Logger Logger::with_role(std::string role, int rank) const {
  Logger copy = *this;
  if (rank >= 0) role += "." + std::to_string(rank);
  copy.prefix_ = role + " " + host_and_pid();
  return copy;
}

Logger Logger::with_level(LogLevel level) const {
  Logger copy = *this;
  copy.level_ = level;
  return copy;
}

void Logger::write(LogLevel level, std::string_view message) const {
  using namespace std::chrono;
  auto now = system_clock::now();
  std::time_t secs = system_clock::to_time_t(now);
  int millis = static_cast<int>(duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[64];
  std::snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  std::string line;
  line.reserve(message.size() + prefix_.size() + 40);
  line += stamp;
  line += ' ';
  line += level_letter(level);
  line += " [";
  line += prefix_;
  line += "] ";
  line += message;
  sink_->write_line(line);
}

}  // namespace shoal
