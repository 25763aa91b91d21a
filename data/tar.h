// A POSIX tar reader (ustar, with pax and GNU long-name extensions) that lists where each
// regular file's bytes are, so a member can be read later with one pread and a shard read front
// to back. Every header is checked (checksum, octal or base-256 size, the archive's length); a
// damaged or truncated archive is a DataError naming the file and the member.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

namespace shoal {

struct TarMember {
  std::string name;         // the member's path inside the archive
  std::int64_t offset = 0;  // of its first data byte in the archive
  std::int64_t size = 0;
};

// The regular files of the archive at `path`, in archive order (directories, links and other
// entries are passed over).
std::vector<TarMember> list_tar(const std::string& path);

// The same over bytes in memory (`name` is used in messages).
std::vector<TarMember> list_tar(std::span<const std::uint8_t> bytes, const std::string& name);

}  // namespace shoal
