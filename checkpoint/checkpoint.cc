// Checkpoint files (checkpoint/checkpoint.h; the formats byte by byte are in docs/checkpoint-format.md).
// Everything read here is external input: a file may be truncated, edited or bit-rotted, so each
// field is checked before it is used and a bad one is a CheckpointError naming the file.
#include "checkpoint/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <new>
#include <set>
#include <utility>

#include "base/error.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace shoal {

// Range files hold the arrays as the host lays them out; the format says little-endian.
static_assert(std::endian::native == std::endian::little, "range files are written from memory: little-endian only");

namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// CRC-32C. `raw` functions update the CRC register without the initial and final inversion,
// so that crc32c(data, n, crc) = ~raw(~crc, data, n) continues a previous call.

constexpr std::uint32_t kCastagnoli = 0x82F63B78;  // the polynomial, bit-reflected

struct SoftTables {
  std::uint32_t t[8][256];
};

// Slice-by-8: t[0] is the byte-at-a-time table, t[k][b] is byte b followed by k zero bytes.
constexpr SoftTables make_soft_tables() {
  SoftTables s{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int i = 0; i < 8; ++i) c = (c >> 1) ^ ((c & 1) ? kCastagnoli : 0);
    s.t[0][b] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (std::uint32_t b = 0; b < 256; ++b) s.t[k][b] = (s.t[k - 1][b] >> 8) ^ s.t[0][s.t[k - 1][b] & 0xff];
  return s;
}
constexpr SoftTables kSoft = make_soft_tables();

inline std::uint64_t load64(const unsigned char* p) {
  std::uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

std::uint32_t soft_raw(std::uint32_t crc, const unsigned char* p, std::size_t n) {
  const auto& t = kSoft.t;
  for (; n > 0 && (reinterpret_cast<std::uintptr_t>(p) & 7) != 0; --n) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t w = load64(p) ^ crc;
    crc = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
          t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
  }
  for (; n > 0; --n) crc = t[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
// The hardware path runs three independent CRCs over three consecutive blocks, because the
// crc32 instruction has a latency of three cycles but a throughput of one; the three are then
// joined: raw(c, ABC) = shift(shift(raw(c, A), |B|) ^ raw(0, B), |C|) ^ raw(0, C), where
// shift(x, n) = raw(x, n zero bytes) is linear in x and so a table lookup per byte of x.
constexpr std::size_t kLongBlock = 8192, kShortBlock = 256;

struct ShiftTable {
  std::uint32_t t[4][256];
  explicit ShiftTable(std::size_t bytes) {
    std::uint32_t basis[32];
    for (int i = 0; i < 32; ++i) {
      std::uint32_t c = 1u << i;
      for (std::size_t k = 0; k < bytes; ++k) c = kSoft.t[0][c & 0xff] ^ (c >> 8);
      basis[i] = c;
    }
    for (int k = 0; k < 4; ++k)
      for (std::uint32_t b = 0; b < 256; ++b) {
        std::uint32_t c = 0;
        for (int i = 0; i < 8; ++i)
          if (b & (1u << i)) c ^= basis[8 * k + i];
        t[k][b] = c;
      }
  }
  std::uint32_t shift(std::uint32_t c) const {
    return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
  }
};

const ShiftTable& long_shift() {
  static const ShiftTable table(kLongBlock);
  return table;
}
const ShiftTable& short_shift() {
  static const ShiftTable table(kShortBlock);
  return table;
}

// Whole groups of three consecutive blocks of `block` bytes, advancing p and n.
__attribute__((target("sse4.2"))) std::uint32_t three_streams(std::uint32_t crc, const unsigned char*& p,
                                                              std::size_t& n, std::size_t block,
                                                              const ShiftTable& table) {
  while (n >= 3 * block) {
    std::uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (const unsigned char* end = p + block; p < end; p += 8) {
      c0 = _mm_crc32_u64(c0, load64(p));
      c1 = _mm_crc32_u64(c1, load64(p + block));
      c2 = _mm_crc32_u64(c2, load64(p + 2 * block));
    }
    crc = table.shift(table.shift(static_cast<std::uint32_t>(c0)) ^ static_cast<std::uint32_t>(c1)) ^
          static_cast<std::uint32_t>(c2);
    p += 2 * block;
    n -= 3 * block;
  }
  return crc;
}

__attribute__((target("sse4.2"))) std::uint32_t hard_raw(std::uint32_t crc, const unsigned char* p, std::size_t n) {
  for (; n > 0 && (reinterpret_cast<std::uintptr_t>(p) & 7) != 0; --n) crc = _mm_crc32_u8(crc, *p++);
  if (n >= 3 * kLongBlock) crc = three_streams(crc, p, n, kLongBlock, long_shift());
  if (n >= 3 * kShortBlock) crc = three_streams(crc, p, n, kShortBlock, short_shift());
  std::uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) c = _mm_crc32_u64(c, load64(p));
  crc = static_cast<std::uint32_t>(c);
  for (; n > 0; --n) crc = _mm_crc32_u8(crc, *p++);
  return crc;
}

bool cpu_has_sse42() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
  }();
  return yes;
}
#endif

// ---------------------------------------------------------------------------------------------
// Small helpers for files.

std::string errno_text(int err) { return std::strerror(err); }

// A name a checkpoint directory may hold: no path, no whitespace, nothing hidden (temporary
// files start with '.'), so that a manifest line splits unambiguously and names nothing outside.
bool valid_file_name(const std::string& name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
          c == '-'))
      return false;
  return true;
}

bool valid_slot_name(const std::string& name) {
  if (name.empty() || name.size() > 64 || name == "values") return false;
  for (char c : name)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_')) return false;
  return true;
}

// A line of external input for an error message: at most 80 characters, control bytes escaped.
std::string printable(const std::string& text) {
  std::string out = "'";
  for (std::size_t i = 0; i < text.size() && i < 80; ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out + (text.size() > 80 ? "...'" : "'");
}

std::string hex8(std::uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%08x", v);
  return buf;
}

// A decimal integer with no sign, no leading zero (but "0") and no overflow.
template <typename Int>
bool parse_decimal(std::string_view text, Int* value) {
  if (text.empty() || (text.size() > 1 && text[0] == '0') || text[0] < '0' || text[0] > '9') return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

bool parse_hex8(std::string_view text, std::uint32_t* value) {
  if (text.size() != 8) return false;
  for (char c : text)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  std::from_chars(text.data(), text.data() + 8, *value, 16);
  return true;
}

// An open file descriptor, closed on every way out.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

void fsync_dir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  SHOAL_REQUIRE(fd.get() >= 0, IoError, "cannot open directory '" << dir << "' to fsync it: " << errno_text(errno));
  SHOAL_REQUIRE(::fsync(fd.get()) == 0, IoError, "fsync of directory '" << dir << "': " << errno_text(errno));
}

// Reads exactly `size` bytes at `offset`; false (errno 0) at an early end of file.
bool pread_exact(int fd, void* out, std::size_t size, std::uint64_t offset) {
  auto* p = static_cast<char*>(out);
  while (size > 0) {
    ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (n == 0) errno = 0;
      return false;
    }
    p += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return true;
}

std::string join_path(const std::string& dir, const std::string& name) {
  return !dir.empty() && dir.back() == '/' ? dir + name : dir + "/" + name;
}

// Reads from the page cache whose destination is 1 to 31 bytes ahead of the source modulo 4096
// run 2.5x slower (4K aliasing of the kernel's copy loop: measured 13 ms against 5 ms for 32 MiB
// on the AMD EPYC build machine). Buffers of ours are aligned as their source; a caller's buffer
// in that relation is read through one (see read_exact).
constexpr std::size_t kPage = 4096;

// Guarded up to 63 bytes ahead, for other CPUs' copy loops; the buffer costs less than the slow copy.
bool aliases(const void* dst, std::uint64_t offset) {
  auto ahead = (reinterpret_cast<std::uintptr_t>(dst) - offset) % kPage;
  return ahead > 0 && ahead < 64;
}

// A buffer of `bytes` whose start is at `offset` modulo a page, for reads at such offsets.
class AlignedBuffer {
 public:
  AlignedBuffer(std::size_t bytes, std::uint64_t offset)
      : base_(static_cast<char*>(std::aligned_alloc(kPage, (bytes + 2 * kPage - 1) / kPage * kPage))) {
    if (base_ == nullptr) throw std::bad_alloc();
    data_ = base_ + offset % kPage;
  }
  ~AlignedBuffer() { std::free(base_); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  char* data() const { return data_; }

 private:
  char* base_;
  char* data_;
};

// Writes are gathered into batches of this many bytes: each batch is CRC'd while it is in the
// cache and then handed to one writev (large calls, no copy of ours).
constexpr std::size_t kWriteBatch = 512 << 10;
// The same for reads that only checksum (verify_file).
constexpr std::size_t kReadBatch = 512 << 10;

}  // namespace

// ---------------------------------------------------------------------------------------------
// CRC-32C

std::uint32_t crc32c_portable(const void* data, std::size_t size, std::uint32_t crc) {
  return ~soft_raw(~crc, static_cast<const unsigned char*>(data), size);
}

bool crc32c_hardware_available() {
#if defined(__x86_64__)
  return cpu_has_sse42();
#else
  return false;
#endif
}

std::uint32_t crc32c_hardware(const void* data, std::size_t size, std::uint32_t crc) {
#if defined(__x86_64__)
  SHOAL_ASSERT(cpu_has_sse42(), "crc32c_hardware called on a CPU without SSE4.2");
  return ~hard_raw(~crc, static_cast<const unsigned char*>(data), size);
#else
  SHOAL_ASSERT(false, "crc32c_hardware called on a build without it");
  return crc32c_portable(data, size, crc);
#endif
}

std::uint32_t crc32c(const void* data, std::size_t size, std::uint32_t crc) {
#if defined(__x86_64__)
  if (cpu_has_sse42()) return ~hard_raw(~crc, static_cast<const unsigned char*>(data), size);
#endif
  return ~soft_raw(~crc, static_cast<const unsigned char*>(data), size);
}

// ---------------------------------------------------------------------------------------------
// Atomic writes

FileEntry write_file_atomic(const std::string& dir, const std::string& name, const Pieces& pieces) {
  SHOAL_ASSERT(valid_file_name(name), "not a checkpoint file name: " << printable(name));
  const std::string path = join_path(dir, name);
  // The pid and a counter keep concurrent writers (processes, or roles run as threads in one
  // process) off each other's temporary.
  static std::atomic<std::uint64_t> counter{0};
  const std::string tmp =
      join_path(dir, "." + name + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++));

  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  SHOAL_REQUIRE(fd.get() >= 0, IoError,
                "cannot write '" << path << "': creating '" << tmp << "': " << errno_text(errno));
  // Removes the temporary unless it was renamed into place.
  struct Cleanup {
    const std::string& tmp;
    bool done = false;
    ~Cleanup() {
      if (!done) ::unlink(tmp.c_str());
    }
  } cleanup{tmp};

  FileEntry entry{name, 0, 0};
  std::vector<iovec> batch;
  std::size_t piece = 0, used = 0;  // the next byte to write is pieces[piece].first + used
  while (piece < pieces.size()) {
    batch.clear();
    std::size_t bytes = 0;
    while (piece < pieces.size() && bytes < kWriteBatch && batch.size() < IOV_MAX) {
      const auto& [data, size] = pieces[piece];
      std::size_t take = std::min(size - used, kWriteBatch - bytes);
      if (take > 0) {
        batch.push_back(iovec{const_cast<char*>(static_cast<const char*>(data)) + used, take});
        entry.crc = crc32c(static_cast<const char*>(data) + used, take, entry.crc);
        bytes += take;
      }
      used += take;
      if (used == size) {
        ++piece;
        used = 0;
      }
    }
    // One writev per batch; a short write continues where it stopped.
    std::size_t first = 0;
    while (first < batch.size()) {
      ssize_t n = ::writev(fd.get(), batch.data() + first, static_cast<int>(batch.size() - first));
      if (n < 0 && errno == EINTR) continue;
      SHOAL_REQUIRE(n > 0, IoError,
                    "cannot write '" << path << "': writing '" << tmp << "': " << errno_text(n < 0 ? errno : EIO));
      entry.size += static_cast<std::uint64_t>(n);
      for (auto left = static_cast<std::size_t>(n); left > 0;) {
        std::size_t step = std::min(left, batch[first].iov_len);
        batch[first].iov_base = static_cast<char*>(batch[first].iov_base) + step;
        batch[first].iov_len -= step;
        left -= step;
        if (batch[first].iov_len == 0) ++first;
      }
      while (first < batch.size() && batch[first].iov_len == 0) ++first;
    }
  }
  SHOAL_REQUIRE(::fsync(fd.get()) == 0, IoError,
                "cannot write '" << path << "': fsync of '" << tmp << "': " << errno_text(errno));
  SHOAL_REQUIRE(::close(fd.release()) == 0, IoError,
                "cannot write '" << path << "': closing '" << tmp << "': " << errno_text(errno));
  SHOAL_REQUIRE(::rename(tmp.c_str(), path.c_str()) == 0, IoError,
                "cannot write '" << path << "': renaming '" << tmp << "' to it: " << errno_text(errno));
  cleanup.done = true;
  fsync_dir(dir);
  return entry;
}

FileEntry write_file_atomic(const std::string& dir, const std::string& name, const std::string& text) {
  return write_file_atomic(dir, name, Pieces{{text.data(), text.size()}});
}

std::string read_whole_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  SHOAL_REQUIRE(fd.get() >= 0, CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
  struct stat st {};
  SHOAL_REQUIRE(::fstat(fd.get(), &st) == 0, CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
  SHOAL_REQUIRE(S_ISREG(st.st_mode), CheckpointError, "cannot read '" << path << "': not a regular file");
  std::string out(static_cast<std::size_t>(st.st_size), '\0');
  std::size_t have = 0;
  for (;;) {
    if (have == out.size()) out.resize(out.size() + 4096);  // it grew since fstat
    ssize_t n = ::read(fd.get(), out.data() + have, out.size() - have);
    if (n < 0 && errno == EINTR) continue;
    SHOAL_REQUIRE(n >= 0, CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  out.resize(have);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Names

std::string checkpoint_name(std::int64_t step) { return "ckpt-" + std::to_string(step); }

std::optional<std::int64_t> parse_checkpoint_name(const std::string& name) {
  std::int64_t step = 0;
  if (name.rfind("ckpt-", 0) != 0 || !parse_decimal(std::string_view(name).substr(5), &step)) return std::nullopt;
  return step;
}

// ---------------------------------------------------------------------------------------------
// MANIFEST:
//   shoal-checkpoint 1
//   step <step>
//   <crc32c, 8 lowercase hex digits> <size in bytes> <name>     (one line per file)
//   crc32c <8 lowercase hex digits: CRC-32C of every byte above this line>

namespace {
constexpr const char* kManifestMagic = "shoal-checkpoint";
constexpr int kManifestFormat = 1;
constexpr std::size_t kMaxManifestBytes = 16 << 20;
}  // namespace

const FileEntry* Manifest::find(const std::string& name) const {
  for (const auto& f : files)
    if (f.name == name) return &f;
  return nullptr;
}

void write_manifest(const std::string& ckpt_dir, const Manifest& manifest) {
  SHOAL_ASSERT(manifest.format == kManifestFormat, "manifest format " << manifest.format);
  std::vector<const FileEntry*> files;
  for (const auto& f : manifest.files) files.push_back(&f);
  std::sort(files.begin(), files.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::string text = std::string(kManifestMagic) + " " + std::to_string(kManifestFormat) + "\n";
  text += "step " + std::to_string(manifest.step) + "\n";
  for (std::size_t i = 0; i < files.size(); ++i) {
    SHOAL_ASSERT(valid_file_name(files[i]->name) && files[i]->name != checkpoint_file::kManifest,
                 "not a checkpoint file name: " << printable(files[i]->name));
    SHOAL_ASSERT(i == 0 || files[i]->name != files[i - 1]->name, "file " << files[i]->name << " listed twice");
    text += hex8(files[i]->crc) + " " + std::to_string(files[i]->size) + " " + files[i]->name + "\n";
  }
  text += "crc32c " + hex8(crc32c(text.data(), text.size())) + "\n";
  write_file_atomic(ckpt_dir, checkpoint_file::kManifest, text);
}

Manifest read_manifest(const std::string& ckpt_dir) {
  const std::string path = join_path(ckpt_dir, checkpoint_file::kManifest);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    SHOAL_REQUIRE(errno != ENOENT, CheckpointError,
                  path << ": no MANIFEST: the checkpoint is incomplete (its writer did not finish)");
    SHOAL_THROW(CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
  }
  SHOAL_REQUIRE(!S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) <= kMaxManifestBytes, CheckpointError,
                path << ": " << st.st_size << " bytes, more than any MANIFEST (" << kMaxManifestBytes << ")");
  const std::string text = read_whole_file(path);

  Manifest m;
  std::size_t at = 0;
  int number = 0;
  std::set<std::string> names;
  bool ended = false;
  while (at < text.size()) {
    std::size_t eol = text.find('\n', at);
    ++number;
    const std::string line = text.substr(at, eol == std::string::npos ? std::string::npos : eol - at);
    auto bad = [&](const std::string& what) {
      SHOAL_THROW(CheckpointError, path << " line " << number << ": " << what << ", got " << printable(line));
    };
    if (eol == std::string::npos) bad("the last line does not end with a newline (truncated?)");
    SHOAL_REQUIRE(!ended, CheckpointError, path << " line " << number << ": text after the closing crc32c line");
    const std::size_t line_start = at;
    at = eol + 1;

    std::vector<std::string_view> fields;
    for (std::size_t p = 0; p <= line.size();) {
      std::size_t space = line.find(' ', p);
      if (space == std::string::npos) space = line.size();
      fields.emplace_back(line.data() + p, space - p);
      p = space + 1;
    }
    if (number == 1) {
      if (fields.size() != 2 || fields[0] != kManifestMagic) bad("expected 'shoal-checkpoint 1'");
      if (fields[1] != std::to_string(kManifestFormat))
        bad("format version " + std::string(fields[1]) + " is not supported (this build reads version 1)");
      m.format = kManifestFormat;
    } else if (number == 2) {
      if (fields.size() != 2 || fields[0] != "step" || !parse_decimal(fields[1], &m.step))
        bad("expected 'step <step number>'");
    } else if (fields.size() == 2 && fields[0] == "crc32c") {
      std::uint32_t want = 0;
      if (!parse_hex8(fields[1], &want)) bad("expected 'crc32c <8 lowercase hex digits>'");
      std::uint32_t got = crc32c(text.data(), line_start);
      SHOAL_REQUIRE(got == want, CheckpointError,
                    path << ": checksum mismatch (crc32c of its lines is " << hex8(got) << ", its last line says "
                         << hex8(want) << "): the MANIFEST was changed or corrupted");
      ended = true;
    } else {
      FileEntry f;
      if (fields.size() != 3 || !parse_hex8(fields[0], &f.crc) || !parse_decimal(fields[1], &f.size))
        bad("expected '<crc32c as 8 lowercase hex digits> <size> <name>'");
      f.name = std::string(fields[2]);
      if (!valid_file_name(f.name) || f.name == checkpoint_file::kManifest)
        bad("bad file name " + printable(f.name) + " (letters, digits, '.', '_' and '-', not starting with '.')");
      if (!names.insert(f.name).second) bad("file " + f.name + " is listed twice");
      m.files.push_back(std::move(f));
    }
  }
  SHOAL_REQUIRE(number >= 2, CheckpointError, path << ": " << number << " lines, too short for a MANIFEST");
  SHOAL_REQUIRE(ended, CheckpointError, path << ": no closing 'crc32c' line (truncated?)");
  // A renamed directory would resume at the wrong step.
  std::string base = fs::path(ckpt_dir).lexically_normal().filename().string();
  if (base.empty()) base = fs::path(ckpt_dir).lexically_normal().parent_path().filename().string();
  if (auto step = parse_checkpoint_name(base))
    SHOAL_REQUIRE(*step == m.step, CheckpointError,
                  path << ": says step " << m.step << " but the directory is " << base);
  return m;
}

void verify_file(const std::string& ckpt_dir, const FileEntry& entry) {
  const std::string path = join_path(ckpt_dir, entry.name);
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    SHOAL_REQUIRE(errno != ENOENT, CheckpointError,
                  path << ": missing (the MANIFEST lists it with " << entry.size << " bytes)");
    SHOAL_THROW(CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
  }
  struct stat st {};
  SHOAL_REQUIRE(::fstat(fd.get(), &st) == 0, CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
  SHOAL_REQUIRE(S_ISREG(st.st_mode), CheckpointError, path << ": not a regular file");
  auto size = static_cast<std::uint64_t>(st.st_size);
  SHOAL_REQUIRE(size >= entry.size, CheckpointError,
                path << ": truncated: " << size << " bytes, the MANIFEST says " << entry.size);
  SHOAL_REQUIRE(size <= entry.size, CheckpointError,
                path << ": " << size << " bytes, longer than the " << entry.size << " the MANIFEST says");
  ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  // A buffer that stays in the L2 cache: the copy out of the page cache lands there and the CRC
  // reads it back from there.
  AlignedBuffer buffer(kReadBatch, 0);
  std::uint32_t crc = 0;
  for (std::uint64_t at = 0; at < size;) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kReadBatch, size - at));
    if (!pread_exact(fd.get(), buffer.data(), n, at)) {
      SHOAL_REQUIRE(errno != 0, CheckpointError, path << ": truncated while it was being read");
      SHOAL_THROW(CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
    }
    crc = crc32c(buffer.data(), n, crc);
    at += n;
  }
  SHOAL_REQUIRE(crc == entry.crc, CheckpointError,
                path << ": checksum mismatch (crc32c " << hex8(crc) << ", the MANIFEST says " << hex8(entry.crc)
                     << "): the file was changed or corrupted");
}

Manifest verify_checkpoint(const std::string& ckpt_dir) {
  Manifest m = read_manifest(ckpt_dir);
  for (const auto& f : m.files) verify_file(ckpt_dir, f);
  return m;
}

// ---------------------------------------------------------------------------------------------
// LATEST, fallback and pruning

void write_latest(const std::string& root, const std::string& name) {
  SHOAL_ASSERT(parse_checkpoint_name(name).has_value(), "not a checkpoint name: " << printable(name));
  write_file_atomic(root, checkpoint_file::kLatest, name + "\n");
}

std::optional<std::string> read_latest(const std::string& root) {
  const std::string path = join_path(root, checkpoint_file::kLatest);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) return std::nullopt;
  SHOAL_REQUIRE(!S_ISREG(st.st_mode) || st.st_size <= 4096, CheckpointError,
                path << ": " << st.st_size << " bytes, not a checkpoint name");
  std::string text = read_whole_file(path);
  const char* space = " \t\r\n\v\f";
  std::size_t first = text.find_first_not_of(space), last = text.find_last_not_of(space);
  std::string name = first == std::string::npos ? "" : text.substr(first, last - first + 1);
  SHOAL_REQUIRE(parse_checkpoint_name(name).has_value(), CheckpointError,
                path << ": " << printable(name) << " is not a checkpoint name (ckpt-<step>)");
  return name;
}

namespace {

// The ckpt-* directories under root, newest step first; none if root does not exist.
std::vector<std::pair<std::int64_t, std::string>> list_checkpoints(const std::string& root) {
  std::vector<std::pair<std::int64_t, std::string>> out;
  std::error_code ec;
  fs::directory_iterator it(root, ec);
  if (ec == std::errc::no_such_file_or_directory) return out;
  SHOAL_REQUIRE(!ec, IoError, "cannot list checkpoint directory '" << root << "': " << ec.message());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    std::string name = it->path().filename().string();
    auto step = parse_checkpoint_name(name);
    std::error_code dir_ec;
    if (step && it->is_directory(dir_ec)) out.emplace_back(*step, name);
  }
  SHOAL_REQUIRE(!ec, IoError, "cannot list checkpoint directory '" << root << "': " << ec.message());
  std::sort(out.begin(), out.end(), std::greater<>());
  return out;
}

bool has_manifest(const std::string& ckpt_dir) {
  struct stat st {};
  return ::stat(join_path(ckpt_dir, checkpoint_file::kManifest).c_str(), &st) == 0;
}

}  // namespace

std::optional<std::string> find_resumable(
    const std::string& root, const std::function<void(const std::string& dir, const std::string& why)>& rejected) {
  std::optional<std::string> latest;
  try {
    latest = read_latest(root);
  } catch (const CheckpointError& e) {
    rejected(join_path(root, checkpoint_file::kLatest), e.what());
  }
  auto usable = [&](const std::string& dir) {
    try {
      verify_checkpoint(dir);
      return true;
    } catch (const CheckpointError& e) {
      rejected(dir, e.what());
      return false;
    }
  };
  if (latest) {
    const std::string dir = join_path(root, *latest);
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      rejected(dir, join_path(root, checkpoint_file::kLatest) + " names " + *latest + " but there is no such directory");
    else if (usable(dir))
      return dir;
  }
  for (const auto& [step, name] : list_checkpoints(root)) {
    if (latest && name == *latest) continue;  // tried above
    const std::string dir = join_path(root, name);
    if (usable(dir)) return dir;
  }
  return std::nullopt;
}

std::vector<std::string> prune_checkpoints(const std::string& root, int keep) {
  SHOAL_REQUIRE(keep >= 0, ConfigError, "checkpoints to keep must be 0 or more, not " << keep);
  std::optional<std::string> latest;
  try {
    latest = read_latest(root);
  } catch (const CheckpointError&) {
    // A bad LATEST protects nothing; the newest complete ones are still kept.
  }
  std::vector<std::string> doomed;
  int complete = 0;
  bool older_than_a_complete = false;  // newest first: every one after the first complete
  for (const auto& [step, name] : list_checkpoints(root)) {
    bool done = has_manifest(join_path(root, name));
    bool keep_it = done ? complete++ < keep : !older_than_a_complete;  // incomplete: maybe being written
    if (latest && name == *latest) keep_it = true;
    if (!keep_it) doomed.push_back(name);
    older_than_a_complete = older_than_a_complete || done;
  }
  std::reverse(doomed.begin(), doomed.end());  // oldest first
  for (const auto& name : doomed) {
    const std::string dir = join_path(root, name);
    // The MANIFEST goes first: a removal cut short leaves an incomplete checkpoint (pruned next
    // time), never a complete-looking one with files missing.
    const std::string manifest = join_path(dir, checkpoint_file::kManifest);
    SHOAL_REQUIRE(::unlink(manifest.c_str()) == 0 || errno == ENOENT, IoError,
                  "cannot remove '" << manifest << "': " << errno_text(errno));
    fsync_dir(dir);
    std::error_code ec;
    fs::remove_all(dir, ec);
    SHOAL_REQUIRE(!ec, IoError, "cannot remove old checkpoint '" << dir << "': " << ec.message());
  }
  if (!doomed.empty()) fsync_dir(root);
  return doomed;
}

// ---------------------------------------------------------------------------------------------
// Range files. The header, little-endian (docs/checkpoint-format.md):
//    0  8  magic "SHOALRNG"
//    8  4  u32 format version (1)
//   12  4  u32 header bytes H: where the first array starts
//   16  4  u32 CRC-32C of bytes [20, H)
//   20  4  u32 slot count S
//   24  8  i64 begin
//   32  8  i64 end
//   40  4  u32 update-run count U
//   44  4  u32 reserved, 0
//   48     S slot names: u8 length, then the name
//          U update runs: i64 first element, i64 updates
//          zero bytes up to H, the smallest multiple of 64 that holds all of the above
//    H     1 + S arrays of end - begin float32: values, then each slot

namespace {

constexpr char kRangeMagic[8] = {'S', 'H', 'O', 'A', 'L', 'R', 'N', 'G'};
constexpr std::uint32_t kRangeFormat = 1;
constexpr std::uint32_t kFixedHeader = 48, kAlign = 64;
constexpr std::uint32_t kMaxSlots = 16;
constexpr std::uint32_t kMaxHeader = 16 << 20;  // 1M update runs: 4 TB of 4 MiB chunks

std::uint64_t header_bytes_for(const std::vector<std::string>& slots, std::uint64_t runs) {
  std::uint64_t n = kFixedHeader + 16 * runs;
  for (const auto& s : slots) n += 1 + s.size();
  return (n + kAlign - 1) / kAlign * kAlign;
}

template <typename T>
void put(std::string& out, std::size_t at, T value) {
  std::memcpy(out.data() + at, &value, sizeof(T));
}

// Reads fields of a header in order, never past its end.
class HeaderReader {
 public:
  HeaderReader(const std::string& bytes, std::size_t at, const std::string& path)
      : bytes_(bytes), at_(at), path_(path) {}
  template <typename T>
  T take(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return value;
  }
  std::string take_string(std::size_t n, const char* what) {
    need(n, what);
    std::string s = bytes_.substr(at_, n);
    at_ += n;
    return s;
  }
  void need(std::size_t n, const char* what) const {
    SHOAL_REQUIRE(n <= bytes_.size() - at_, CheckpointError,
                  path_ << ": bad range-file header: " << what << " runs past its end (" << bytes_.size() << " bytes)");
  }
  std::size_t at() const { return at_; }

 private:
  const std::string& bytes_;
  std::size_t at_;
  const std::string& path_;
};

std::string slot_list(const std::vector<std::string>& slots) {
  if (slots.empty()) return "none";
  std::string s;
  for (const auto& x : slots) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// Which array of a range file `array` is: 0 the values, 1 + s slot s.
std::size_t array_index(const RangeInfo& r, const std::string& array, const std::string& path) {
  if (array == "values") return 0;
  auto it = std::find(r.slots.begin(), r.slots.end(), array);
  SHOAL_REQUIRE(it != r.slots.end(), CheckpointError,
                path << ": has no optimizer slot '" << array << "' (its slots: " << slot_list(r.slots) << ")");
  return 1 + static_cast<std::size_t>(it - r.slots.begin());
}

// The header of one range file, checked field by field against itself, the file's size and
// its name.
RangeInfo read_range_header(const std::string& ckpt_dir, const FileEntry& entry) {
  const std::string path = join_path(ckpt_dir, entry.name);
  auto bad = [&](const std::string& what) {
    SHOAL_THROW(CheckpointError, path << ": bad range-file header: " << what);
  };
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    SHOAL_REQUIRE(errno != ENOENT, CheckpointError, path << ": missing (the MANIFEST lists it)");
    SHOAL_THROW(CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
  }
  struct stat st {};
  SHOAL_REQUIRE(::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode), CheckpointError,
                "cannot read '" << path << "': not a readable regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  SHOAL_REQUIRE(size == entry.size, CheckpointError,
                path << ": " << size << " bytes, the MANIFEST says " << entry.size);
  if (size < kAlign) bad(std::to_string(size) + " bytes, too short for a header");

  std::string head(kAlign, '\0');
  auto read_at = [&](std::string& out, std::uint64_t offset) {
    if (!pread_exact(fd.get(), out.data(), out.size(), offset))
      SHOAL_THROW(CheckpointError, "cannot read '" << path << "': " << (errno ? errno_text(errno) : "truncated"));
  };
  read_at(head, 0);
  if (std::memcmp(head.data(), kRangeMagic, 8) != 0) bad("no SHOALRNG magic: not a range file");
  HeaderReader fixed(head, 8, path);
  auto version = fixed.take<std::uint32_t>("version");
  if (version != kRangeFormat)
    bad("format version " + std::to_string(version) + " is not supported (this build reads version 1)");
  auto header_bytes = fixed.take<std::uint32_t>("header length");
  if (header_bytes < kAlign || header_bytes % kAlign != 0 || header_bytes > kMaxHeader || header_bytes > size)
    bad("header length " + std::to_string(header_bytes) + " is not a multiple of 64 within the file's " +
        std::to_string(size) + " bytes");

  // The whole header, then its checksum before any variable-length field is trusted.
  std::string header(header_bytes, '\0');
  std::memcpy(header.data(), head.data(), kAlign);
  if (header_bytes > kAlign) {
    std::string rest(header_bytes - kAlign, '\0');
    read_at(rest, kAlign);
    std::memcpy(header.data() + kAlign, rest.data(), rest.size());
  }
  HeaderReader h(header, 16, path);
  auto want_crc = h.take<std::uint32_t>("header checksum");
  std::uint32_t got_crc = crc32c(header.data() + 20, header_bytes - 20);
  if (got_crc != want_crc)
    bad("checksum mismatch (crc32c " + hex8(got_crc) + ", the header says " + hex8(want_crc) +
        "): the file was changed or corrupted");

  RangeInfo r;
  r.file = entry.name;
  auto slots = h.take<std::uint32_t>("slot count");
  r.begin = h.take<std::int64_t>("begin");
  r.end = h.take<std::int64_t>("end");
  auto runs = h.take<std::uint32_t>("update-run count");
  auto reserved = h.take<std::uint32_t>("reserved field");
  if (slots > kMaxSlots) bad(std::to_string(slots) + " optimizer slots, more than " + std::to_string(kMaxSlots));
  if (r.begin < 0 || r.end <= r.begin)
    bad("element range [" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ") is empty or negative");
  if (reserved != 0) bad("reserved field is " + std::to_string(reserved) + ", not 0");
  for (std::uint32_t s = 0; s < slots; ++s) {
    auto length = h.take<std::uint8_t>("slot name length");
    std::string name = h.take_string(length, "slot name");
    if (!valid_slot_name(name)) bad("slot name " + printable(name) + " is not valid");
    if (std::find(r.slots.begin(), r.slots.end(), name) != r.slots.end()) bad("slot " + name + " appears twice");
    r.slots.push_back(std::move(name));
  }
  // Checked against the header's length before anything is reserved for them.
  if (runs < 1 || runs > static_cast<std::uint64_t>(r.end - r.begin) || 16ull * runs > header_bytes - h.at())
    bad(std::to_string(runs) + " update runs do not fit the header or the " + std::to_string(r.end - r.begin) +
        " elements");
  r.updates.reserve(runs);
  for (std::uint32_t u = 0; u < runs; ++u) {
    auto first = h.take<std::int64_t>("update run");
    auto count = h.take<std::int64_t>("update run");
    bool ordered = u == 0 ? first == r.begin : first > r.updates.back().first;
    if (!ordered || first >= r.end || count < 0)
      bad("update run " + std::to_string(u) + " (element " + std::to_string(first) + ", " + std::to_string(count) +
          " updates) is out of order or out of [" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ")");
    r.updates.emplace_back(first, count);
  }
  if (header_bytes_for(r.slots, runs) != header_bytes)
    bad("header length " + std::to_string(header_bytes) + " does not match its fields (" +
        std::to_string(header_bytes_for(r.slots, runs)) + ")");
  if (header.find_first_not_of('\0', h.at()) != std::string::npos) bad("padding is not zero");

  // The arrays: (1 + S) x n floats after the header, exactly to the end of the file.
  const std::uint64_t n = static_cast<std::uint64_t>(r.end - r.begin);
  std::uint64_t data = 0;
  bool overflow =
      __builtin_mul_overflow(n, 4 * (1 + static_cast<std::uint64_t>(slots)), &data) || data > UINT64_MAX - header_bytes;
  if (overflow || header_bytes + data != size)
    bad("the file is " + std::to_string(size) + " bytes, but a header of " + std::to_string(header_bytes) +
        " bytes and " + std::to_string(1 + slots) + " arrays of " + std::to_string(n) + " floats make " +
        (overflow ? std::string("more than 2^64") : std::to_string(header_bytes + data)));
  if (entry.name != range_file_name(r.begin, r.end))
    bad("it holds elements [" + std::to_string(r.begin) + ", " + std::to_string(r.end) + "), which would be named " +
        range_file_name(r.begin, r.end));
  return r;
}

// Reads exactly `size` bytes at `offset` into out: straight in, or through a buffer aligned as
// the source when out is in the slow relation to it (see aliases).
void read_exact(int fd, char* out, std::size_t size, std::uint64_t offset, const std::string& path) {
  auto fail = [&] {
    SHOAL_THROW(CheckpointError, "cannot read '"
                                     << path
                                     << "': " << (errno ? errno_text(errno) : "truncated since its header was read"));
  };
  if (size < kReadBatch || !aliases(out, offset)) {
    if (!pread_exact(fd, out, size, offset)) fail();
    return;
  }
  AlignedBuffer buffer(kReadBatch, offset);
  for (std::size_t done = 0; done < size;) {
    std::size_t n = std::min(kReadBatch, size - done);
    if (!pread_exact(fd, buffer.data(), n, offset + done)) fail();
    std::memcpy(out + done, buffer.data(), n);
    done += n;
  }
}

}  // namespace

std::string range_file_name(std::int64_t begin, std::int64_t end) {
  return "params." + std::to_string(begin) + "-" + std::to_string(end);
}

FileEntry write_range_file(const std::string& ckpt_dir, const RangeWrite& range) {
  SHOAL_ASSERT(range.begin >= 0 && range.end > range.begin, "range [" << range.begin << ", " << range.end << ")");
  SHOAL_ASSERT(range.slots.size() <= kMaxSlots && range.arrays.size() == 1 + range.slots.size(),
               range.arrays.size() << " arrays for " << range.slots.size() << " slots");
  for (const auto& s : range.slots) SHOAL_ASSERT(valid_slot_name(s), "slot name " << printable(s));
  const std::int64_t n = range.end - range.begin;
  SHOAL_ASSERT(!range.updates.empty() && range.updates.front().first == range.begin,
               "the first update run must start at " << range.begin);
  for (std::size_t u = 0; u < range.updates.size(); ++u)
    SHOAL_ASSERT((u == 0 || range.updates[u].first > range.updates[u - 1].first) &&
                     range.updates[u].first < range.end && range.updates[u].second >= 0,
                 "update run " << u << " at element " << range.updates[u].first);
  const std::uint64_t header_bytes = header_bytes_for(range.slots, range.updates.size());
  SHOAL_ASSERT(header_bytes <= kMaxHeader, range.updates.size() << " update runs");

  std::string header(header_bytes, '\0');
  std::memcpy(header.data(), kRangeMagic, 8);
  put<std::uint32_t>(header, 8, kRangeFormat);
  put<std::uint32_t>(header, 12, static_cast<std::uint32_t>(header_bytes));
  put<std::uint32_t>(header, 20, static_cast<std::uint32_t>(range.slots.size()));
  put<std::int64_t>(header, 24, range.begin);
  put<std::int64_t>(header, 32, range.end);
  put<std::uint32_t>(header, 40, static_cast<std::uint32_t>(range.updates.size()));
  std::size_t at = kFixedHeader;
  for (const auto& s : range.slots) {
    header[at++] = static_cast<char>(s.size());
    std::memcpy(header.data() + at, s.data(), s.size());
    at += s.size();
  }
  for (const auto& [first, count] : range.updates) {
    put<std::int64_t>(header, at, first);
    put<std::int64_t>(header, at + 8, count);
    at += 16;
  }
  put<std::uint32_t>(header, 16, crc32c(header.data() + 20, header.size() - 20));

  Pieces pieces{{header.data(), header.size()}};
  for (std::size_t a = 0; a < range.arrays.size(); ++a) {
    std::int64_t total = 0;
    for (const auto& [data, count] : range.arrays[a]) {
      SHOAL_ASSERT(count >= 0, "a piece of " << count << " elements");
      if (count > 0) pieces.emplace_back(data, static_cast<std::size_t>(count) * sizeof(float));
      total += count;
    }
    SHOAL_ASSERT(total == n, "array " << a << " has " << total << " elements, the range " << n);
  }
  return write_file_atomic(ckpt_dir, range_file_name(range.begin, range.end), pieces);
}

std::vector<RangeInfo> list_ranges(const std::string& ckpt_dir, const Manifest& manifest) {
  std::vector<RangeInfo> out;
  for (const auto& f : manifest.files)
    if (f.name.rfind("params.", 0) == 0) out.push_back(read_range_header(ckpt_dir, f));
  std::sort(out.begin(), out.end(), [](const RangeInfo& a, const RangeInfo& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < out.size(); ++i)
    SHOAL_REQUIRE(out[i].begin >= out[i - 1].end, CheckpointError,
                  ckpt_dir << ": range files " << out[i - 1].file << " and " << out[i].file << " overlap");
  return out;
}

void read_range(const std::string& ckpt_dir, const std::vector<RangeInfo>& ranges, const std::string& array,
                std::int64_t begin, std::int64_t end, float* out) {
  SHOAL_ASSERT(begin <= end, "read_range of [" << begin << ", " << end << ")");
  std::vector<const RangeInfo*> sorted;
  for (const auto& r : ranges) sorted.push_back(&r);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  std::int64_t at = begin;
  for (const RangeInfo* r : sorted) {
    if (at == end || r->begin > at) break;
    if (r->end <= at) continue;
    const std::string path = join_path(ckpt_dir, r->file);
    const std::uint64_t index = array_index(*r, array, path);
    const std::int64_t stop = std::min(r->end, end);
    const auto n = static_cast<std::uint64_t>(r->end - r->begin);
    const std::uint64_t offset = header_bytes_for(r->slots, r->updates.size()) +
                                 (index * n + static_cast<std::uint64_t>(at - r->begin)) * sizeof(float);
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    SHOAL_REQUIRE(fd.get() >= 0, CheckpointError, "cannot read '" << path << "': " << errno_text(errno));
    read_exact(fd.get(), reinterpret_cast<char*>(out + (at - begin)),
               static_cast<std::size_t>(stop - at) * sizeof(float), offset, path);
    at = stop;
  }
  SHOAL_REQUIRE(at == end, CheckpointError,
                ckpt_dir << ": elements [" << at << ", " << end << ") of '" << array
                         << "' are in no range file of the checkpoint");
}

std::int64_t updates_at(const std::vector<RangeInfo>& ranges, std::int64_t element) {
  for (const auto& r : ranges) {
    if (element < r.begin || element >= r.end) continue;
    auto it = std::upper_bound(r.updates.begin(), r.updates.end(), element,
                               [](std::int64_t e, const auto& run) { return e < run.first; });
    return it == r.updates.begin() ? 0 : std::prev(it)->second;
  }
  return 0;
}

}  // namespace shoal
