// One fuzz input through the decoder and a reader of every field, as the roles read them.
// Shared by the libFuzzer target (decode_fuzz.cc) and the GoogleTest that runs it in CI.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shoal {

// Input layout: byte 0 = number of frames (1..8), then per frame a 2-byte little-endian
// length and that many bytes (clipped to what is left). Returns 1 if the message was
// accepted, 0 if it was rejected with ProtocolError. Anything else escaping is a bug.
int decode_one(const std::uint8_t* data, std::size_t size);

}  // namespace shoal
