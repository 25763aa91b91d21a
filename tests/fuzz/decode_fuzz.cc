// libFuzzer target for the wire decoder: cmake -DSHOAL_FUZZ=ON with clang, then
//   ./build/tests/shoal_decode_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "tests/fuzz/decode_one.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (shoal::decode_one(data, size) == shoal::DecodeOutcome::broken) std::abort();
  return 0;
}
