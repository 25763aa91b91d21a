// Deterministic random numbers. Counter-based (a value is a pure function of seed and index),
// so weight init, shuffles and dropout masks are reproducible across runs, thread counts and
// backends.
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "compute/kernel_math.h"

namespace shoal {

using math::hash_combine;
using math::mix64;
using math::uniform_at;  // exact in float, so host and device agree bit for bit

inline std::uint64_t hash_string(std::string_view s) {
  std::uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ULL;
  return mix64(h);
}

// A small sequential generator for host-side work (shuffles, init).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : seed_(mix64(seed)) {}
  std::uint64_t next_u64() { return hash_combine(seed_, counter_++); }
  // Uniform integer in [0, bound) without modulo bias worth caring about for bound << 2^64.
  std::uint64_t below(std::uint64_t bound) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next_u64()) * bound) >> 64);
  }
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
  double normal() {  // Box-Muller, one value per call
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t seed_;
  std::uint64_t counter_ = 0;
};

}  // namespace shoal
