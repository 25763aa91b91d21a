#include "telemetry/telemetry.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "base/error.h"

namespace shoal {
namespace {

void atomic_add(std::atomic<double>& target, double amount) {
  double seen = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(seen, seen + amount, std::memory_order_relaxed)) {
  }
}

bool valid_name(const std::string& name, bool label) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
    if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
  }
  return !(label && name.rfind("__", 0) == 0);  // reserved
}

// Go's %g as Prometheus prints it: +Inf, -Inf, NaN, otherwise the shortest exact form.
std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", v);
  // Shortest that reads back the same.
  for (int precision = 1; precision < 17; ++precision) {
    char shorter[32];
    std::snprintf(shorter, sizeof shorter, "%.*g", precision, v);
    if (std::strtod(shorter, nullptr) == v) return shorter;
  }
  return text;
}

std::string escape_help(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
  return out;
}

// Adds one label to a rendered label set ("" or "{...}").
std::string with_label(const std::string& labels, const std::string& name, const std::string& value) {
  std::string one = render_labels({{name, value}});
  if (labels.empty()) return one;
  return labels.substr(0, labels.size() - 1) + "," + one.substr(1);
}

}  // namespace

void Counter::add(double amount) {
  SHOAL_ASSERT(amount >= 0, "a counter cannot go down (" << amount << ")");
  atomic_add(value_, amount);
}

void Gauge::add(double amount) { atomic_add(value_, amount); }

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    SHOAL_ASSERT(std::isfinite(bounds_[i]), "a histogram bound is not finite");
    SHOAL_ASSERT(i == 0 || bounds_[i - 1] < bounds_[i], "histogram bounds must increase");
  }
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double value) {
  const auto at = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  buckets_[at].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, value);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.upper_bounds = bounds_;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

std::vector<double> latency_buckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

std::string render_labels(const Labels& labels) {
  if (labels.empty()) return "";
  std::string out = "{";
  for (std::size_t i = 0; i < labels.size(); ++i) {
    SHOAL_ASSERT(valid_name(labels[i].first, true), "bad label name '" << labels[i].first << "'");
    if (i > 0) out += ",";
    out += labels[i].first + "=\"";
    for (char c : labels[i].second) {
      if (c == '\\')
        out += "\\\\";
      else if (c == '"')
        out += "\\\"";
      else if (c == '\n')
        out += "\\n";
      else
        out += c;
    }
    out += "\"";
  }
  return out + "}";
}

MetricsRegistry::Family& MetricsRegistry::family(const std::string& name, Type type, const std::string& help,
                                                 const std::vector<double>& bounds) {
  SHOAL_ASSERT(valid_name(name, false), "bad metric name '" << name << "'");
  auto [it, added] = families_.try_emplace(name, Family{type, help, bounds, {}, {}, {}});
  SHOAL_ASSERT(added || (it->second.type == type && it->second.help == help && it->second.bounds == bounds),
               "metric " << name << " registered twice, differently");
  return it->second;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, Type::counter, help, {}).counters[render_labels(labels)];
  if (!slot) slot = std::make_unique<Counter>();
  return *slot;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, Type::gauge, help, {}).gauges[render_labels(labels)];
  if (!slot) slot = std::make_unique<Gauge>();
  return *slot;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      const std::vector<double>& upper_bounds, const Labels& labels) {
  std::lock_guard lock(mutex_);
  auto& slot = family(name, Type::histogram, help, upper_bounds).histograms[render_labels(labels)];
  if (!slot) slot = std::make_unique<Histogram>(upper_bounds);
  return *slot;
}

std::string MetricsRegistry::render() const {
  std::lock_guard lock(mutex_);
  std::ostringstream out;
  for (const auto& [name, f] : families_) {
    static const char* const kTypes[] = {"counter", "gauge", "histogram"};
    out << "# HELP " << name << " " << escape_help(f.help) << "\n";
    out << "# TYPE " << name << " " << kTypes[static_cast<int>(f.type)] << "\n";
    for (const auto& [labels, c] : f.counters) out << name << labels << " " << format_value(c->value()) << "\n";
    for (const auto& [labels, g] : f.gauges) out << name << labels << " " << format_value(g->value()) << "\n";
    for (const auto& [labels, h] : f.histograms) {
      Histogram::Snapshot s = h->snapshot();
      for (std::size_t i = 0; i < s.upper_bounds.size(); ++i)
        out << name << "_bucket" << with_label(labels, "le", format_value(s.upper_bounds[i])) << " " << s.cumulative[i]
            << "\n";
      out << name << "_bucket" << with_label(labels, "le", "+Inf") << " " << s.cumulative.back() << "\n";
      out << name << "_sum" << labels << " " << format_value(s.sum) << "\n";
      out << name << "_count" << labels << " " << s.cumulative.back() << "\n";
    }
  }
  return out.str();
}

}  // namespace shoal
