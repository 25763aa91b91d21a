// Metrics as JSON lines: one object per event ({"event": "epoch", "epoch": 3, ...}), appended
// to a file so a plot can be made from it while the job runs.
#pragma once

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>
#include <variant>

namespace shoal {

using MetricValue = std::variant<double, std::int64_t, std::string>;

// One JSON object, built field by field.
std::string json_object(std::initializer_list<std::pair<const char*, MetricValue>> fields);
std::string json_escape(const std::string& text);

class MetricsWriter {
 public:
  MetricsWriter() = default;                        // writes nothing
  explicit MetricsWriter(const std::string& path);  // appends; throws IoError
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;

  void write(std::initializer_list<std::pair<const char*, MetricValue>> fields);

 private:
  std::FILE* file_ = nullptr;
};

}  // namespace shoal
