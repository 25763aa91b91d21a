#include "data/tar.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base/error.h"

namespace shoal {
namespace {

constexpr std::int64_t kBlock = 512;
constexpr std::int64_t kMaxExtendedHeader = 1 << 20;  // a pax header or a GNU long name

// Reads exactly n bytes at `offset`, or returns false at the end of the archive.
using ReadAt = std::function<bool(std::int64_t offset, std::int64_t n, std::uint8_t* out)>;

std::string field(const std::uint8_t* p, std::size_t n) {
  std::size_t len = 0;
  while (len < n && p[len] != 0) ++len;
  return std::string(reinterpret_cast<const char*>(p), len);
}

// A numeric field: octal digits (space or NUL ended), or GNU base-256 when the top bit is set.
bool parse_number(const std::uint8_t* p, std::size_t n, std::int64_t* out) {
  if (p[0] & 0x80) {
    if (p[0] & 0x40) return false;  // negative
    std::uint64_t v = p[0] & 0x3F;
    for (std::size_t i = 1; i < n; ++i) {
      if (v >> 55) return false;
      v = (v << 8) | p[i];
    }
    *out = static_cast<std::int64_t>(v);
    return true;
  }
  std::size_t i = 0;
  while (i < n && p[i] == ' ') ++i;
  std::uint64_t v = 0;
  bool digits = false;
  for (; i < n && p[i] >= '0' && p[i] <= '7'; ++i) {
    if (v >> 60) return false;
    v = v * 8 + (p[i] - '0');
    digits = true;
  }
  for (; i < n; ++i)
    if (p[i] != ' ' && p[i] != 0) return false;
  *out = static_cast<std::int64_t>(v);
  return digits;
}

bool checksum_ok(const std::uint8_t* h) {
  std::int64_t stored = 0;
  if (!parse_number(h + 148, 8, &stored)) return false;
  std::int64_t unsigned_sum = 0, signed_sum = 0;
  for (int i = 0; i < kBlock; ++i) {
    const bool in_field = i >= 148 && i < 156;
    unsigned_sum += in_field ? ' ' : h[i];
    signed_sum += in_field ? ' ' : static_cast<std::int8_t>(h[i]);
  }
  return stored == unsigned_sum || stored == signed_sum;  // old tars summed signed chars
}

// pax records: "LEN key=value\n", LEN counting the whole record.
void parse_pax(const std::string& data, std::string* path, std::int64_t* size, const std::string& where) {
  std::size_t at = 0;
  while (at < data.size()) {
    std::size_t space = data.find(' ', at);
    SHOAL_REQUIRE(space != std::string::npos && space > at && space - at <= 20, DataError,
                  where << ": malformed pax header record");
    std::int64_t len = 0;
    for (std::size_t i = at; i < space; ++i) {
      SHOAL_REQUIRE(data[i] >= '0' && data[i] <= '9', DataError, where << ": malformed pax header record length");
      len = len * 10 + (data[i] - '0');
    }
    SHOAL_REQUIRE(len > static_cast<std::int64_t>(space - at + 1) && at + static_cast<std::size_t>(len) <= data.size() &&
                      data[at + static_cast<std::size_t>(len) - 1] == '\n',
                  DataError, where << ": pax header record overruns its header");
    std::string record = data.substr(space + 1, at + static_cast<std::size_t>(len) - space - 2);
    std::size_t eq = record.find('=');
    SHOAL_REQUIRE(eq != std::string::npos, DataError, where << ": pax header record without '='");
    std::string key = record.substr(0, eq), value = record.substr(eq + 1);
    if (key == "path") {
      *path = value;
    } else if (key == "size") {
      std::int64_t v = 0;
      bool ok = !value.empty() && value.size() <= 18;
      for (char c : value) ok = ok && c >= '0' && c <= '9';
      if (ok) for (char c : value) v = v * 10 + (c - '0');
      SHOAL_REQUIRE(ok, DataError, where << ": pax size '" << value << "' is not a number");
      *size = v;
    }
    at += static_cast<std::size_t>(len);
  }
}

std::vector<TarMember> list(const ReadAt& read_at, std::int64_t total, const std::string& name) {
  std::vector<TarMember> members;
  std::uint8_t h[kBlock];
  std::int64_t at = 0;
  std::string next_path;       // from a pax 'x' header or a GNU 'L' entry, for the next member
  std::int64_t next_size = -1;  // from a pax 'x' header
  std::string last = "(the first member)";
  SHOAL_REQUIRE(total > 0, DataError, name << ": empty file (0 bytes), not a tar archive");
  while (true) {
    if (!read_at(at, kBlock, h)) {
      // Archives end with two zero blocks; writers that stop without them are common enough,
      // but a header cut short is damage.
      SHOAL_REQUIRE(at == total && next_path.empty() && next_size < 0, DataError,
                    name << ": truncated tar archive (a header after " << last << " is cut short)");
      break;
    }
    if (std::all_of(h, h + kBlock, [](std::uint8_t b) { return b == 0; })) break;  // end of archive
    const std::string where = name + ": member after " + last;
    SHOAL_REQUIRE(checksum_ok(h), DataError,
                  name << ": bad tar header checksum at byte " << at << " (after " << last
                       << "): not a tar archive, or damaged");
    std::int64_t size = 0;
    SHOAL_REQUIRE(parse_number(h + 124, 12, &size), DataError, where << ": bad size field");
    const char type = static_cast<char>(h[156]);
    std::string path = field(h, 100);
    if (std::memcmp(h + 257, "ustar", 5) == 0) {
      std::string prefix = field(h + 345, 155);
      if (!prefix.empty()) path = prefix + "/" + path;
    }
    if (type == 'x' || type == 'L') {
      SHOAL_REQUIRE(size <= kMaxExtendedHeader, DataError,
                    where << ": extended header of " << size << " bytes (limit " << kMaxExtendedHeader << ")");
    }
    if (!next_path.empty()) path = next_path;
    if (next_size >= 0 && type != 'x' && type != 'L' && type != 'g') size = next_size;
    const std::int64_t data_at = at + kBlock;
    const std::int64_t padded = (size + kBlock - 1) / kBlock * kBlock;
    SHOAL_REQUIRE(data_at + size <= total, DataError,
                  name << ": truncated tar archive: member '" << path << "' needs " << size << " bytes at byte "
                       << data_at << ", the file has " << total);
    if (type == 'x' || type == 'L') {
      std::string data(static_cast<std::size_t>(size), '\0');
      SHOAL_REQUIRE(read_at(data_at, size, reinterpret_cast<std::uint8_t*>(data.data())), DataError,
                    where << ": truncated extended header");
      if (type == 'x') {
        parse_pax(data, &next_path, &next_size, where);
      } else {
        next_path = field(reinterpret_cast<const std::uint8_t*>(data.data()), data.size());
      }
    } else {
      if (type == '0' || type == '\0' || type == '7') {
        SHOAL_REQUIRE(!path.empty(), DataError, where << ": member without a name");
        members.push_back({path, data_at, size});
        last = "'" + path + "'";
      }
      if (type != 'g') {
        next_path.clear();
        next_size = -1;
      }
    }
    // Links, directories and devices carry no data; their size field is ignored by writers.
    const bool has_data = type == '0' || type == '\0' || type == '7' || type == 'x' || type == 'L' || type == 'g' ||
                          type == 'K';
    at = data_at + (has_data ? padded : 0);
    SHOAL_REQUIRE(at <= total, DataError,
                  name << ": truncated tar archive (the file ends inside the padding after " << last << ")");
  }
  return members;
}

}  // namespace

std::vector<TarMember> list_tar(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SHOAL_REQUIRE(fd >= 0, DataError, path << ": cannot open (" << std::strerror(errno) << ")");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  SHOAL_REQUIRE(::fstat(fd, &st) == 0 && S_ISREG(st.st_mode), DataError, path << ": not a regular file");
  ReadAt read_at = [&](std::int64_t offset, std::int64_t n, std::uint8_t* out) {
    std::int64_t done = 0;
    while (done < n) {
      ssize_t got = ::pread(fd, out + done, static_cast<std::size_t>(n - done), offset + done);
      if (got < 0 && errno == EINTR) continue;
      SHOAL_REQUIRE(got >= 0, DataError, path << ": read error at byte " << offset + done << " (" << std::strerror(errno) << ")");
      if (got == 0) return false;
      done += got;
    }
    return true;
  };
  return list(read_at, st.st_size, path);
}

std::vector<TarMember> list_tar(std::span<const std::uint8_t> bytes, const std::string& name) {
  const auto total = static_cast<std::int64_t>(bytes.size());
  ReadAt read_at = [&](std::int64_t offset, std::int64_t n, std::uint8_t* out) {
    if (offset + n > total) return false;
    if (n > 0) std::memcpy(out, bytes.data() + offset, static_cast<std::size_t>(n));
    return true;
  };
  return list(read_at, total, name);
}

}  // namespace shoal
