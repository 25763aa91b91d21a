// One-line structured logging: every line carries time, level and a prefix naming the role,
// rank, host and pid. A Logger is a cheap value passed to the objects that log, so several
// roles can live in one test process with their own prefixes (no global logger).
#pragma once

#include <cstdio>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>

namespace shoal {

enum class LogLevel { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

LogLevel parse_log_level(std::string_view name);  // throws ConfigError

// Where lines go. Thread-safe; one sink is typically shared by every Logger of a process.
// Tests derive from it to watch for lines (tests/support/inproc_cluster.h).
class LogSink {
 public:
  explicit LogSink(std::FILE* out = stderr) : out_(out) {}
  virtual ~LogSink() = default;
  virtual void write_line(std::string_view line);

 private:
  std::mutex mutex_;
  std::FILE* out_;
};

class Logger {
 public:
  Logger();  // info level, stderr, prefix "shoal host:pid"
  Logger(std::string role, LogLevel level, std::shared_ptr<LogSink> sink = nullptr);

  // A logger for the same sink with another role or rank in its prefix.
  Logger with_role(std::string role, int rank = -1) const;
  Logger with_level(LogLevel level) const;

  bool enabled(LogLevel level) const { return level >= level_; }
  LogLevel level() const { return level_; }
  void write(LogLevel level, std::string_view message) const;

 private:
  std::string prefix_;
  LogLevel level_;
  std::shared_ptr<LogSink> sink_;
};

}  // namespace shoal

#define SHOAL_LOG(logger, lvl, message)                         \
  do {                                                          \
    if ((logger).enabled(::shoal::LogLevel::lvl)) {             \
      std::ostringstream shoal_log_;                            \
      shoal_log_ << message;                                    \
      (logger).write(::shoal::LogLevel::lvl, shoal_log_.str()); \
    }                                                           \
  } while (0)
