// What a running process tells a scraper: counters, gauges and histograms in the Prometheus
// text exposition format (version 0.0.4), and whether it is ready. The role's own threads
// update them with relaxed atomics (no lock on a hot path); the status server's thread reads
// them when it renders a scrape. telemetry/status_server.h serves a Telemetry over HTTP.
//
// Metric objects are registered once, before or while the role runs, and live as long as
// their registry: a role keeps references to them. Names follow Prometheus' rules
// ([a-zA-Z_:][a-zA-Z0-9_:]*, labels [a-zA-Z_][a-zA-Z0-9_]*); a bad one is a logic error.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace shoal {

using Labels = std::vector<std::pair<std::string, std::string>>;

// A value that only goes up (bytes sent, samples trained).
class Counter {
 public:
  void add(double amount = 1.0);  // amount >= 0
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (the step, the loss, live members).
class Gauge {
 public:
  void set(double value) { value_.store(value, std::memory_order_relaxed); }
  void add(double amount);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into buckets with fixed upper bounds (latencies, staleness).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);  // increasing, finite; +Inf is implied
  void observe(double value);

  struct Snapshot {
    std::vector<double> upper_bounds;
    std::vector<std::uint64_t> cumulative;  // per bound, then +Inf (= count)
    double sum = 0;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<double> sum_{0.0};
};

// Latency buckets from 0.5 ms to 10 s.
std::vector<double> latency_buckets();

class MetricsRegistry {
 public:
  // The same name and labels give the same object; a name already registered with another
  // type, help or bucket layout is a logic error.
  Counter& counter(const std::string& name, const std::string& help, const Labels& labels = {});
  Gauge& gauge(const std::string& name, const std::string& help, const Labels& labels = {});
  Histogram& histogram(const std::string& name, const std::string& help, const std::vector<double>& upper_bounds,
                       const Labels& labels = {});

  // The text exposition format: # HELP and # TYPE per family, then its samples.
  std::string render() const;

 private:
  enum class Type { counter, gauge, histogram };
  struct Family {
    Type type;
    std::string help;
    std::vector<double> bounds;  // histograms
    // Rendered label set ("{a=\"x\"}" or "") -> the metric.
    std::map<std::string, std::unique_ptr<Counter>> counters;
    std::map<std::string, std::unique_ptr<Gauge>> gauges;
    std::map<std::string, std::unique_ptr<Histogram>> histograms;
  };
  Family& family(const std::string& name, Type type, const std::string& help, const std::vector<double>& bounds);

  mutable std::mutex mutex_;
  std::map<std::string, Family> families_;
};

// One process's (or, in tests, one role's) telemetry: its metrics and its readiness. Ready
// means: registered with the job (a worker or server), or the job assembled (the coordinator).
struct Telemetry {
  MetricsRegistry metrics;
  std::atomic<bool> ready{false};
};

// "{a=\"x\",b=\"y\"}" with the values escaped as the format requires; "" for no labels.
std::string render_labels(const Labels& labels);

}  // namespace shoal
