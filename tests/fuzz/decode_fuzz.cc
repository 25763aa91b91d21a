// libFuzzer target for the wire decoder: cmake -DSHOAL_FUZZ=ON with clang, then
//   ./build/tests/shoal_decode_fuzz -max_total_time=60
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/decode_one.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  shoal::decode_one(data, size);
  return 0;
}
