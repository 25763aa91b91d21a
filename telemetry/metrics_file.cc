#include "telemetry/metrics_file.h"

#include <cerrno>
#include <cmath>
#include <cstring>

#include "base/error.h"

namespace shoal {

std::string json_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string json_object(std::initializer_list<std::pair<const char*, MetricValue>> fields) {
  std::string out = "{";
  bool first = true;
  for (const auto& [key, value] : fields) {
    if (!first) out += ", ";
    first = false;
    out += '"';
    out += key;
    out += "\": ";
    if (const double* d = std::get_if<double>(&value)) {
      if (std::isfinite(*d)) {
        char buf[32];
        std::snprintf(buf, sizeof(buf), "%.9g", *d);
        out += buf;
      } else {
        out += "null";
      }
    } else if (const std::int64_t* i = std::get_if<std::int64_t>(&value)) {
      out += std::to_string(*i);
    } else {
      out += '"' + json_escape(std::get<std::string>(value)) + '"';
    }
  }
  return out + "}";
}

MetricsWriter::MetricsWriter(const std::string& path) {
  file_ = std::fopen(path.c_str(), "a");
  SHOAL_REQUIRE(file_ != nullptr, IoError, "cannot open metrics file '" << path << "': " << std::strerror(errno));
}

MetricsWriter::~MetricsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsWriter::write(std::initializer_list<std::pair<const char*, MetricValue>> fields) {
  if (file_ == nullptr) return;
  std::string line = json_object(fields) + "\n";
  std::fwrite(line.data(), 1, line.size(), file_);
  std::fflush(file_);
}

}  // namespace shoal
