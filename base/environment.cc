#include "base/environment.h"

#include <cstdlib>

#include "base/error.h"

namespace shoal {

std::optional<long> env_integer(const char* name, long low, long high) {
  const char* text = std::getenv(name);
  if (text == nullptr) return std::nullopt;
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  SHOAL_REQUIRE(
      end != text && *end == '\0' && value >= low && value <= high, ConfigError,
      "environment variable " << name << "='" << text << "' is not an integer in [" << low << ", " << high << "]");
  return value;
}

std::optional<int> hostname_ordinal(const std::string& host) {
  const std::string name = host.substr(0, host.find('.'));  // the pod's own name, not its domain
  const std::size_t dash = name.rfind('-');
  if (dash == std::string::npos) return std::nullopt;
  const std::string digits = name.substr(dash + 1);
  if (digits.empty() || digits.size() > 7 || digits.find_first_not_of("0123456789") != std::string::npos)
    return std::nullopt;
  return std::stoi(digits);
}

std::optional<std::string> mig_device(const char* nvidia, const char* cuda) {
  for (const char* list : {nvidia, cuda}) {
    if (list == nullptr) continue;
    std::string text = list;
    for (std::size_t at = 0; at <= text.size();) {
      std::size_t comma = text.find(',', at);
      if (comma == std::string::npos) comma = text.size();
      std::string entry = text.substr(at, comma - at);
      while (!entry.empty() && entry.front() == ' ') entry.erase(0, 1);
      if (entry.rfind("MIG-", 0) == 0) return entry;
      at = comma + 1;
    }
  }
  return std::nullopt;
}

std::optional<std::string> mig_device_from_environment() {
  return mig_device(std::getenv("NVIDIA_VISIBLE_DEVICES"), std::getenv("CUDA_VISIBLE_DEVICES"));
}

}  // namespace shoal
