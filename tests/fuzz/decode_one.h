// One fuzz input through the decoder and a reader of every field, as the roles read them.
// Shared by the libFuzzer target (decode_fuzz.cc) and the GoogleTest that runs it in CI.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shoal {

enum class DecodeOutcome {
  rejected,  // a ProtocolError (or a kj::Exception from a lazily read field, as the roles see it)
  accepted,  // decoded, and every promise of a decoded message holds
  broken,    // decoded, but a promise does not hold (a payload of the wrong size, ...): a bug
};

// Input layout: byte 0 = number of frames (1..8), then per frame a 2-byte little-endian
// length and that many bytes (clipped to what is left). Anything escaping is a bug too.
DecodeOutcome decode_one(const std::uint8_t* data, std::size_t size);

}  // namespace shoal
