// What every benchmark of bench/ prints with: medians with their spread over runs, and Markdown
// table rows (docs/benchmarks.md takes them as they are).
#pragma once

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/process.h"

namespace shoal::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Spread {
  double median = 0, lo = 0, hi = 0;
};

inline Spread spread(std::vector<double> v) {
  SHOAL_ASSERT(!v.empty(), "no samples");
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return {n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), v.front(), v.back()};
}

inline Spread scaled(const Spread& s, double k) { return {k * s.median, k * s.lo, k * s.hi}; }
// The spread of `k / x`: a time becomes a rate (its extremes swap).
inline Spread inverse(const Spread& s, double k) { return {k / s.median, k / s.hi, k / s.lo}; }

inline std::string format(const char* fmt, double value) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), fmt, value);
  return buf;
}

// "2.26 GB/s (1.95–2.42)", each figure written by `write`; the range left out when it is one value.
template <typename Write>
std::string with_range(const Spread& s, Write write, const std::string& unit = "") {
  std::string lo = write(s.lo), hi = write(s.hi);
  return write(s.median) + unit + (lo == hi ? "" : " (" + lo + "–" + hi + ")");
}
inline std::string with_range(const Spread& s, const char* fmt, const std::string& unit = "") {
  return with_range(
      s, [fmt](double v) { return format(fmt, v); }, unit);
}

// A command-line count: a positive integer, or a ConfigError naming the flag (with the usage).
inline int positive_int(const std::string& flag, const char* text, const char* usage) {
  int value = 0;
  const char* end = text + std::strlen(text);
  auto [stop, ec] = std::from_chars(text, end, value);
  if (ec != std::errc() || stop != end || value < 1)
    SHOAL_THROW(ConfigError, flag << " needs a positive integer, not '" << text << "'\n" << usage);
  return value;
}

// The CPU, as /proc/cpuinfo names it (for a table's heading).
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      std::string name = line.substr(line.find(':') + 1);
      return name.substr(std::min(name.find_first_not_of(" \t"), name.size()));
    }
  return "unknown CPU";
}

inline void print_row(const std::vector<std::string>& cells) {
  std::string line = "|";
  for (const auto& c : cells) line += " " + c + " |";
  std::puts(line.c_str());
}

// A benchmark's main(): as every shoal process, the allocator tuned first; any error one line
// and its documented exit code.
inline int main_of(const char* name, int (*run)(int, char**), int argc, char** argv) {
  tune_allocator();
  try {
    return run(argc, argv);
  } catch (...) {
    auto failure = failure_of(std::current_exception());
    std::fprintf(stderr, "%s: error: %s\n", name, failure.message.c_str());
    return static_cast<int>(failure.code);
  }
}

}  // namespace shoal::bench
