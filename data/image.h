// Image files in memory: JPEG through libjpeg-turbo's TurboJPEG API (with DCT-domain scaling when
// the caller needs much less than the full size), PNG through libspng. Every colour type either
// decoder meets is converted to 1 (luma) or 3 (RGB) channels; a file that is not a whole, valid
// JPEG or PNG is a DataError whose message starts with the name the caller passes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace shoal {

struct Image {
  std::int64_t height = 0, width = 0, channels = 0;
  std::vector<std::uint8_t> pixels;  // height x width x channels (interleaved)
};

struct ImageHeader {
  std::int64_t height = 0, width = 0;
  bool gray = false;  // a grayscale JPEG or a grayscale (with or without alpha) PNG
};

// True for the file names the image readers take: .jpg, .jpeg, .png (any case).
bool is_image_name(const std::string& name);

// The size and colour of an encoded image, from its header alone.
ImageHeader read_image_header(std::span<const std::uint8_t> bytes, const std::string& name);

// Decodes into `channels` (1 or 3) channels. A JPEG is decoded at the smallest DCT scale (1/8,
// 2/8, ... 8/8) that keeps it at least min_height x min_width; 0 x 0 decodes at full size. A
// PNG is always decoded whole. Images above 2^28 pixels are refused before allocating.
Image decode_image(std::span<const std::uint8_t> bytes, int channels, const std::string& name,
                   std::int64_t min_height = 0, std::int64_t min_width = 0);

// Encoders, for tests, benchmarks and `shoal data` tools (1 or 3 channels).
std::vector<std::uint8_t> encode_png(const Image& image);
std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality = 95);

}  // namespace shoal
