#include "core/environment.h"

#include <cstdlib>

#include "core/error.h"

namespace shoal {

std::optional<long> env_integer(const char* name, long low, long high) {
  const char* text = std::getenv(name);
  if (text == nullptr) return std::nullopt;
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  SHOAL_REQUIRE(end != text && *end == '\0' && value >= low && value <= high, ConfigError,
                "environment variable " << name << "='" << text << "' is not an integer in [" << low << ", " << high
                                        << "]");
  return value;
}

}  // namespace shoal
