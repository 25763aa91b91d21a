#include "data/image.h"

#include <spng.h>
#include <turbojpeg.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "base/error.h"

namespace shoal {
namespace {

constexpr std::int64_t kMaxPixels = std::int64_t{1} << 28;

bool is_jpeg(std::span<const std::uint8_t> b) { return b.size() >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF; }
bool is_png(std::span<const std::uint8_t> b) {
  static const std::uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return b.size() >= 8 && std::memcmp(b.data(), sig, 8) == 0;
}

// One TurboJPEG handle per thread and direction: creating one allocates, and a handle is not
// safe to share between threads.
struct TjHandle {
  tjhandle h;
  explicit TjHandle(bool compress) : h(compress ? tjInitCompress() : tjInitDecompress()) {
    SHOAL_REQUIRE(h != nullptr, InternalError, "TurboJPEG: cannot create a handle: " << tjGetErrorStr2(nullptr));
  }
  ~TjHandle() { tjDestroy(h); }
};
// After an error a handle can be left in a state that fails the next, valid, stream: a failed
// call replaces its thread's handle.
thread_local std::unique_ptr<TjHandle> tj_decompressor;
tjhandle decompressor() {
  if (!tj_decompressor) tj_decompressor = std::make_unique<TjHandle>(false);
  return tj_decompressor->h;
}
// The message of the failed call, and a fresh handle for the next one.
std::string tj_failure(tjhandle h) {
  std::string message = tjGetErrorStr2(h);
  tj_decompressor.reset();
  return message;
}
tjhandle compressor() {
  thread_local TjHandle handle(true);
  return handle.h;
}

using SpngCtx = std::unique_ptr<spng_ctx, void (*)(spng_ctx*)>;
SpngCtx png_decoder(std::span<const std::uint8_t> bytes, const std::string& name) {
  SpngCtx ctx(spng_ctx_new(0), spng_ctx_free);
  SHOAL_REQUIRE(ctx, InternalError, "libspng: cannot create a context");
  spng_set_chunk_limits(ctx.get(), 1 << 24, 1 << 26);  // ancillary chunks: 16 MiB each, 64 MiB in all
  int rc = spng_set_png_buffer(ctx.get(), bytes.data(), bytes.size());
  SHOAL_REQUIRE(rc == 0, DataError, name << ": not a valid PNG (" << spng_strerror(rc) << ")");
  return ctx;
}

void check_size(std::int64_t w, std::int64_t h, const std::string& name) {
  SHOAL_REQUIRE(w > 0 && h > 0, DataError, name << ": image is " << w << "x" << h);
  SHOAL_REQUIRE(w * h <= kMaxPixels, DataError,
                name << ": image is " << w << "x" << h << ", above the limit of " << kMaxPixels << " pixels");
}

// ITU-R 601-2 luma, as PIL's "L" conversion.
void rgb_to_gray(const std::uint8_t* rgb, std::uint8_t* gray, std::int64_t pixels) {
  for (std::int64_t i = 0; i < pixels; ++i) {
    const std::uint8_t* p = rgb + 3 * i;
    gray[i] = static_cast<std::uint8_t>((299 * p[0] + 587 * p[1] + 114 * p[2] + 500) / 1000);
  }
}

std::string tj_error(tjhandle h) { return tjGetErrorStr2(h); }

Image decode_jpeg(std::span<const std::uint8_t> bytes, int channels, const std::string& name, std::int64_t min_h,
                  std::int64_t min_w) {
  tjhandle h = decompressor();
  int w = 0, ht = 0, subsamp = 0, colorspace = 0;
  SHOAL_REQUIRE(tjDecompressHeader3(h, bytes.data(), static_cast<unsigned long>(bytes.size()), &w, &ht, &subsamp,
                                    &colorspace) == 0,
                DataError, name << ": not a valid JPEG (" << tj_failure(h) << ")");
  check_size(w, ht, name);
  // The smallest scale that keeps the image at least min_h x min_w.
  int count = 0;
  tjscalingfactor* factors = tjGetScalingFactors(&count);
  tjscalingfactor best{1, 1};
  for (int i = 0; i < count && (min_h > 0 || min_w > 0); ++i) {
    const tjscalingfactor f = factors[i];
    if (f.num > f.denom) continue;
    if (TJSCALED(w, f) < min_w || TJSCALED(ht, f) < min_h) continue;
    if (static_cast<double>(f.num) / f.denom < static_cast<double>(best.num) / best.denom) best = f;
  }
  Image img;
  img.width = TJSCALED(w, best);
  img.height = TJSCALED(ht, best);
  const bool cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
  int format = cmyk ? TJPF_CMYK : (channels == 1 ? TJPF_GRAY : TJPF_RGB);
  int bytes_per_pixel = tjPixelSize[format];
  std::vector<std::uint8_t> out(static_cast<std::size_t>(img.width * img.height * bytes_per_pixel));
  // STOPONWARNING: a truncated or damaged stream is an error, not an image padded with grey.
  int rc = tjDecompress2(h, bytes.data(), static_cast<unsigned long>(bytes.size()), out.data(),
                         static_cast<int>(img.width), 0, static_cast<int>(img.height), format, TJFLAG_STOPONWARNING);
  SHOAL_REQUIRE(rc == 0, DataError, name << ": corrupt or truncated JPEG (" << tj_failure(h) << ")");
  const std::int64_t n = img.width * img.height;
  img.channels = channels;
  if (!cmyk) {
    img.pixels = std::move(out);
    return img;
  }
  // Adobe CMYK/YCCK JPEGs store inverted inks (as Photoshop writes them): R = C * K / 255.
  std::vector<std::uint8_t> rgb(static_cast<std::size_t>(3 * n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t* p = out.data() + 4 * i;
    for (int c = 0; c < 3; ++c) rgb[3 * i + c] = static_cast<std::uint8_t>((p[c] * p[3] + 127) / 255);
  }
  if (channels == 3) {
    img.pixels = std::move(rgb);
  } else {
    img.pixels.resize(static_cast<std::size_t>(n));
    rgb_to_gray(rgb.data(), img.pixels.data(), n);
  }
  return img;
}

Image decode_png(std::span<const std::uint8_t> bytes, int channels, const std::string& name) {
  SpngCtx ctx = png_decoder(bytes, name);
  spng_ihdr ihdr{};
  int rc = spng_get_ihdr(ctx.get(), &ihdr);
  SHOAL_REQUIRE(rc == 0, DataError, name << ": not a valid PNG (" << spng_strerror(rc) << ")");
  check_size(ihdr.width, ihdr.height, name);
  const bool gray8 = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE && ihdr.bit_depth <= 8;
  const int fmt = channels == 1 && gray8 ? SPNG_FMT_G8 : SPNG_FMT_RGB8;
  std::size_t size = 0;
  rc = spng_decoded_image_size(ctx.get(), fmt, &size);
  SHOAL_REQUIRE(rc == 0, DataError, name << ": cannot decode PNG (" << spng_strerror(rc) << ")");
  std::vector<std::uint8_t> out(size);
  rc = spng_decode_image(ctx.get(), out.data(), out.size(), fmt, 0);
  SHOAL_REQUIRE(rc == 0, DataError, name << ": corrupt or truncated PNG (" << spng_strerror(rc) << ")");
  Image img;
  img.width = ihdr.width;
  img.height = ihdr.height;
  img.channels = channels;
  const std::int64_t n = img.width * img.height;
  if (fmt == SPNG_FMT_G8 || channels == 3) {
    img.pixels = std::move(out);
  } else {
    img.pixels.resize(static_cast<std::size_t>(n));
    rgb_to_gray(out.data(), img.pixels.data(), n);
  }
  return img;
}

}  // namespace

bool is_image_name(const std::string& name) {
  auto dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  std::string ext = name.substr(dot + 1);
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext == "jpg" || ext == "jpeg" || ext == "png";
}

ImageHeader read_image_header(std::span<const std::uint8_t> bytes, const std::string& name) {
  ImageHeader header;
  if (is_jpeg(bytes)) {
    tjhandle h = decompressor();
    int w = 0, ht = 0, subsamp = 0, colorspace = 0;
    SHOAL_REQUIRE(tjDecompressHeader3(h, bytes.data(), static_cast<unsigned long>(bytes.size()), &w, &ht, &subsamp,
                                      &colorspace) == 0,
                  DataError, name << ": not a valid JPEG (" << tj_failure(h) << ")");
    header = {ht, w, colorspace == TJCS_GRAY};
  } else if (is_png(bytes)) {
    SpngCtx ctx = png_decoder(bytes, name);
    spng_ihdr ihdr{};
    int rc = spng_get_ihdr(ctx.get(), &ihdr);
    SHOAL_REQUIRE(rc == 0, DataError, name << ": not a valid PNG (" << spng_strerror(rc) << ")");
    header = {ihdr.height, ihdr.width,
              ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE || ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA};
  } else {
    SHOAL_REQUIRE(!bytes.empty(), DataError, name << ": empty file (0 bytes)");
    SHOAL_THROW(DataError, name << ": not a JPEG or PNG image (unknown signature)");
  }
  check_size(header.width, header.height, name);
  return header;
}

Image decode_image(std::span<const std::uint8_t> bytes, int channels, const std::string& name, std::int64_t min_height,
                   std::int64_t min_width) {
  SHOAL_REQUIRE(channels == 1 || channels == 3, InternalError, "decode_image: channels " << channels);
  if (is_jpeg(bytes)) return decode_jpeg(bytes, channels, name, min_height, min_width);
  if (is_png(bytes)) return decode_png(bytes, channels, name);
  SHOAL_REQUIRE(!bytes.empty(), DataError, name << ": empty file (0 bytes)");
  SHOAL_THROW(DataError, name << ": not a JPEG or PNG image (unknown signature)");
}

std::vector<std::uint8_t> encode_png(const Image& image) {
  SpngCtx ctx(spng_ctx_new(SPNG_CTX_ENCODER), spng_ctx_free);
  SHOAL_REQUIRE(ctx, InternalError, "libspng: cannot create an encoder");
  spng_set_option(ctx.get(), SPNG_ENCODE_TO_BUFFER, 1);
  spng_ihdr ihdr{};
  ihdr.width = static_cast<std::uint32_t>(image.width);
  ihdr.height = static_cast<std::uint32_t>(image.height);
  ihdr.bit_depth = 8;
  ihdr.color_type = image.channels == 1 ? SPNG_COLOR_TYPE_GRAYSCALE : SPNG_COLOR_TYPE_TRUECOLOR;
  spng_set_ihdr(ctx.get(), &ihdr);
  int rc = spng_encode_image(ctx.get(), image.pixels.data(), image.pixels.size(), SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE);
  SHOAL_REQUIRE(rc == 0, InternalError, "libspng: cannot encode: " << spng_strerror(rc));
  std::size_t len = 0;
  void* buf = spng_get_png_buffer(ctx.get(), &len, &rc);
  SHOAL_REQUIRE(buf != nullptr, InternalError, "libspng: no encoded buffer: " << spng_strerror(rc));
  std::vector<std::uint8_t> out(static_cast<std::uint8_t*>(buf), static_cast<std::uint8_t*>(buf) + len);
  std::free(buf);
  return out;
}

std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality) {
  tjhandle h = compressor();
  unsigned char* buf = nullptr;
  unsigned long len = 0;
  const bool gray = image.channels == 1;
  int rc = tjCompress2(h, image.pixels.data(), static_cast<int>(image.width), 0, static_cast<int>(image.height),
                       gray ? TJPF_GRAY : TJPF_RGB, &buf, &len, gray ? TJSAMP_GRAY : TJSAMP_420, quality, 0);
  SHOAL_REQUIRE(rc == 0, InternalError, "TurboJPEG: cannot encode: " << tj_error(h));
  std::vector<std::uint8_t> out(buf, buf + len);
  tjFree(buf);
  return out;
}

}  // namespace shoal
