// Checkpoint range files beside plain file I/O of the same bytes, measured in the same run.
//
//   build/bench/shoal_checkpoint_bench [--dir DIR] [--mb N] [--runs R]
//
// For 64 MiB and 256 MiB (or --mb N) of optimizer state, values and one velocity slot of
// N/8 Mi floats each, held as 4 MiB chunks as a parameter server holds them:
//   (a) plain write + fsync of those bytes to a new file, two large writes;
//   (b) write_range_file from the chunk pieces: CRC-32C on the way, a temporary name, fsync,
//       rename and a directory fsync;
//   (c) verify_checkpoint (reads every byte and checks its CRC) + list_ranges + read_range of
//       both arrays, as a job resuming from the checkpoint does;
//   (d) a plain read of the same bytes into the same buffers.
// (b) is compared with (a) and (c) with (d) of the same run; the target is 0.8x. (c) and (d) are
// measured twice: from the page cache (what was just written: the CPU and memory cost of the
// format, which reads every byte twice, once for the CRC and once into the arrays) and from the
// disk, the files' pages dropped first (posix_fadvise DONTNEED of the fsynced files, checked with
// mincore: a file system that keeps them, tmpfs say, gets no such row), as a job resuming after a
// restart does.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "bench/bench_table.h"
#include "checkpoint/checkpoint.h"
#include "base/error.h"
#include "base/process.h"

namespace shoal {
namespace {

using namespace bench;  // the table helpers of bench/bench_table.h

// ---------------------------------------------------------------------------------------------
// The command line.

struct Plan {
  std::string dir = "/tmp";
  std::vector<int> mib = {64, 256};
  int runs = 5;
};

constexpr const char* kUsage =
    "usage: shoal_checkpoint_bench [--dir DIR] [--mb N] [--runs R]\n"
    "  --dir DIR  where to write (a fresh directory is made in it and removed at the end;\n"
    "             default /tmp)\n"
    "  --mb N     only N MiB of state (values + velocity), not 64 and 256\n"
    "  --runs R   runs of each measurement (default 5)\n";

int positive_int(const std::string& flag, const char* text) { return bench::positive_int(flag, text, kUsage); }

Plan parse(int argc, char** argv) {
  Plan plan;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (flag != "--dir" && flag != "--mb" && flag != "--runs")
      SHOAL_THROW(ConfigError, "unknown flag '" << flag << "'\n" << kUsage);
    if (i + 1 == argc) SHOAL_THROW(ConfigError, flag << " needs a value\n" << kUsage);
    const char* value = argv[++i];
    if (flag == "--dir") plan.dir = value;
    if (flag == "--mb") plan.mib = {positive_int(flag, value)};
    if (flag == "--runs") plan.runs = positive_int(flag, value);
  }
  return plan;
}

// ---------------------------------------------------------------------------------------------
// The machine and the file system.

std::string file_system(const std::string& dir) {
  struct statfs fs {};
  if (statfs(dir.c_str(), &fs) != 0) return "unknown file system";
  switch (static_cast<unsigned long>(fs.f_type)) {
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs (fsync does nothing)";
    case 0x794C7630:
      return "overlayfs";
  }
  char name[64];
  std::snprintf(name, sizeof(name), "file system 0x%lx", static_cast<unsigned long>(fs.f_type));
  return name;
}

// A fresh directory under `parent`, removed with everything in it at the end.
class Scratch {
 public:
  explicit Scratch(const std::string& parent) {
    std::string path = parent + "/shoal-ckpt-bench-XXXXXX";
    SHOAL_REQUIRE(mkdtemp(path.data()) != nullptr, IoError,
                  "cannot make a directory in '" << parent << "': " << std::strerror(errno));
    path_ = path;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// The measurements.

constexpr std::int64_t kChunkElements = (4 << 20) / sizeof(float);  // chunk_kib = 4096

// Floats 64-byte aligned, as tensors and the parameter arena are (compute/tensor.cc).
class Floats {
 public:
  explicit Floats(std::size_t n, float fill)
      : n_(n), data_(static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64))) {
    if (data_ == nullptr) throw std::bad_alloc();
    std::fill(data_, data_ + n, fill);  // touched now: no first-touch page faults in the timings
  }
  ~Floats() { std::free(data_); }
  Floats(const Floats&) = delete;
  Floats& operator=(const Floats&) = delete;
  float* data() const { return data_; }
  std::size_t size() const { return n_; }
  std::size_t bytes() const { return n_ * sizeof(float); }

 private:
  std::size_t n_;
  float* data_;
};

struct State {
  explicit State(std::int64_t elements)
      : n(elements),
        values(static_cast<std::size_t>(n), 0.0f),
        velocity(static_cast<std::size_t>(n), 0.0f),
        read_values(static_cast<std::size_t>(n), 1.0f),
        read_velocity(static_cast<std::size_t>(n), 1.0f) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      values.data()[i] = static_cast<float>(i % 9973) * 0.001f;
      velocity.data()[i] = -static_cast<float>(i % 7919) * 0.0001f;
    }
  }
  std::int64_t n = 0;  // floats per array
  Floats values, velocity;
  Floats read_values, read_velocity;  // where (c) and (d) read to
};

void write_all(int fd, const void* data, std::size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    SHOAL_REQUIRE(n > 0, IoError, "writing '" << path << "': " << std::strerror(errno));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void read_all(int fd, void* data, std::size_t size, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    ssize_t n = ::read(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    SHOAL_REQUIRE(n > 0, IoError, "reading '" << path << "': " << (n == 0 ? "early end" : std::strerror(errno)));
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

// (a)
double plain_write(const State& s, const std::string& path) {
  ::unlink(path.c_str());  // a new file, as each checkpoint's are
  auto start = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SHOAL_REQUIRE(fd >= 0, IoError, "cannot create '" << path << "': " << std::strerror(errno));
  write_all(fd, s.values.data(), s.values.bytes(), path);
  write_all(fd, s.velocity.data(), s.velocity.bytes(), path);
  SHOAL_REQUIRE(::fsync(fd) == 0, IoError, "fsync of '" << path << "': " << std::strerror(errno));
  ::close(fd);
  return seconds_since(start);
}

// (b), then the MANIFEST (not timed) for (c).
double range_write(const State& s, const std::string& ckpt) {
  ::unlink((ckpt + "/" + range_file_name(0, s.n)).c_str());
  RangeWrite range;
  range.begin = 0;
  range.end = s.n;
  range.slots = {"velocity"};
  range.arrays.resize(2);
  for (std::int64_t at = 0; at < s.n; at += kChunkElements) {
    std::int64_t count = std::min(kChunkElements, s.n - at);
    range.arrays[0].emplace_back(s.values.data() + at, count);
    range.arrays[1].emplace_back(s.velocity.data() + at, count);
    range.updates.emplace_back(at, 1000);
  }
  auto start = Clock::now();
  FileEntry entry = write_range_file(ckpt, range);
  double seconds = seconds_since(start);
  Manifest m;
  m.step = 1;
  m.files = {entry};
  write_manifest(ckpt, m);
  return seconds;
}

// (c)
double verify_and_read(State& s, const std::string& ckpt) {
  auto start = Clock::now();
  Manifest m = verify_checkpoint(ckpt);
  std::vector<RangeInfo> ranges = list_ranges(ckpt, m);
  read_range(ckpt, ranges, "values", 0, s.n, s.read_values.data());
  read_range(ckpt, ranges, "velocity", 0, s.n, s.read_velocity.data());
  return seconds_since(start);
}

// (d)
double plain_read(State& s, const std::string& path) {
  auto start = Clock::now();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SHOAL_REQUIRE(fd >= 0, IoError, "cannot open '" << path << "': " << std::strerror(errno));
  read_all(fd, s.read_values.data(), s.read_values.bytes(), path);
  read_all(fd, s.read_velocity.data(), s.read_velocity.bytes(), path);
  ::close(fd);
  return seconds_since(start);
}

// Drops the (clean, fsynced) pages of every file under `path` from the page cache; false if some
// are still resident afterwards.
bool drop_cached(const std::string& path) {
  std::vector<std::string> files;
  if (std::filesystem::is_directory(path)) {
    for (const auto& e : std::filesystem::directory_iterator(path))
      if (e.is_regular_file()) files.push_back(e.path().string());
  } else {
    files.push_back(path);
  }
  const long page = sysconf(_SC_PAGESIZE);
  for (const auto& f : files) {
    int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st {};
    bool dropped = fstat(fd, &st) == 0 && posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0;
    if (dropped && st.st_size > 0) {
      void* map = mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
      if (map == MAP_FAILED) {
        dropped = false;
      } else {
        std::vector<unsigned char> resident(static_cast<std::size_t>((st.st_size + page - 1) / page));
        dropped = mincore(map, static_cast<std::size_t>(st.st_size), resident.data()) == 0;
        std::size_t in = 0;
        for (unsigned char r : resident) in += r & 1;
        dropped = dropped && in * 20 < resident.size();  // at most 5% left (metadata, readahead)
        munmap(map, static_cast<std::size_t>(st.st_size));
      }
    }
    ::close(fd);
    if (!dropped) return false;
  }
  return true;
}

void check_read_back(const State& s, const char* what) {
  SHOAL_REQUIRE(std::memcmp(s.read_values.data(), s.values.data(), s.values.bytes()) == 0 &&
                    std::memcmp(s.read_velocity.data(), s.velocity.data(), s.velocity.bytes()) == 0,
                InternalError, what << " read back other bytes than were written");
}

// CRC-32C of `bytes` from memory: best of 5, GB/s.
double crc_gbps(const State& s, bool hardware) {
  const std::size_t bytes = s.values.bytes();
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    auto start = Clock::now();
    volatile std::uint32_t crc =
        hardware ? crc32c_hardware(s.values.data(), bytes) : crc32c_portable(s.values.data(), bytes);
    (void)crc;
    best = std::min(best, seconds_since(start));
  }
  return static_cast<double>(bytes) / best / 1e9;
}

struct Samples {
  std::vector<double> plain_write, range_write, plain_read, verify_read, cold_plain_read, cold_verify_read;
  std::vector<double> write_ratio, read_ratio, cold_read_ratio;  // plain time / checkpoint time, per run
  bool cold = true;                                              // the pages could be dropped in every run
};

Samples measure(State& s, const std::string& dir, int runs) {
  const std::string plain = dir + "/plain.bin", ckpt = dir + "/ckpt-1";
  std::filesystem::create_directory(ckpt);
  Samples out;
  for (int r = 0; r < runs; ++r) {
    double a = plain_write(s, plain);
    double b = range_write(s, ckpt);
    double d = plain_read(s, plain);
    if (r == 0) check_read_back(s, "the plain read");
    std::fill(s.read_values.data(), s.read_values.data() + s.n, 0.0f);
    double c = verify_and_read(s, ckpt);
    if (r == 0) check_read_back(s, "verify_checkpoint + read_range");
    out.plain_write.push_back(a);
    out.range_write.push_back(b);
    out.plain_read.push_back(d);
    out.verify_read.push_back(c);
    out.write_ratio.push_back(a / b);
    out.read_ratio.push_back(d / c);
    // From the disk: the same reads with the files' pages dropped first.
    if (out.cold && drop_cached(plain)) {
      double dc = plain_read(s, plain);
      if (drop_cached(ckpt)) {
        double cc = verify_and_read(s, ckpt);
        out.cold_plain_read.push_back(dc);
        out.cold_verify_read.push_back(cc);
        out.cold_read_ratio.push_back(dc / cc);
        continue;
      }
    }
    out.cold = false;
  }
  return out;
}

constexpr double kTarget = 0.8;

void print_table(const std::vector<std::pair<int, Samples>>& results) {
  print_row({"state", "what", "time", "throughput", "vs plain, same run", "target"});
  print_row({"---:", "---", "---:", "---:", "---:", "---"});
  for (const auto& [mib, s] : results) {
    const double bytes = static_cast<double>(mib) * (1 << 20);
    auto row = [&](const std::string& what, const std::vector<double>& times, const std::vector<double>* ratios) {
      Spread t = spread(times);
      std::string vs, target;
      if (ratios) {
        Spread ratio = spread(*ratios);
        vs = with_range(scaled(ratio, 100), "%.0f", "%");
        target = format("≥ %.0f%%: ", 100 * kTarget) + (ratio.median >= kTarget ? "PASS" : "MISS");
      }
      print_row({std::to_string(mib) + " MiB", what, with_range(scaled(t, 1e3), "%.1f", " ms"),
                 with_range(inverse(t, bytes / 1e9), "%.2f", " GB/s"), vs, target});
    };
    row("(a) plain write + fsync", s.plain_write, nullptr);
    row("(b) write_range_file (CRC, temporary, fsync, rename, dir fsync)", s.range_write, &s.write_ratio);
    row("(d) plain read (page cache)", s.plain_read, nullptr);
    row("(c) verify_checkpoint + read_range of both arrays (page cache)", s.verify_read, &s.read_ratio);
    if (s.cold) {
      row("(d) plain read (from disk: pages dropped)", s.cold_plain_read, nullptr);
      row("(c) verify_checkpoint + read_range (from disk: pages dropped)", s.cold_verify_read, &s.cold_read_ratio);
    }
  }
}

int run(int argc, char** argv) {
  Plan plan = parse(argc, argv);
  Scratch scratch(plan.dir);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::printf("# shoal_checkpoint_bench on %ld cores, %s, host %s\n", sysconf(_SC_NPROCESSORS_ONLN),
              cpu_model().c_str(), host);
  std::printf("# in %s (%s); %d runs; median (min–max). State = values + one velocity slot in 4 MiB chunks.\n",
              scratch.path().c_str(), file_system(scratch.path()).c_str(), plan.runs);
  std::printf("# (c) and (d) read from memory (what was just written), then from the disk (pages dropped first).\n");
  std::fflush(stdout);

  std::vector<std::pair<int, Samples>> results;
  std::optional<State> last;
  for (int mib : plan.mib) {
    last.reset();  // one state in memory at a time
    last.emplace(static_cast<std::int64_t>(mib) * (1 << 20) / 2 / static_cast<std::int64_t>(sizeof(float)));
    results.emplace_back(mib, measure(*last, scratch.path(), plan.runs));
  }
  std::string crc = "portable " + format("%.2f", crc_gbps(*last, false)) + " GB/s";
  if (crc32c_hardware_available()) crc = "SSE4.2 " + format("%.2f", crc_gbps(*last, true)) + " GB/s, " + crc;
  std::printf("# CRC-32C from memory: %s\n\n", crc.c_str());
  print_table(results);
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) { return shoal::bench::main_of("shoal_checkpoint_bench", shoal::run, argc, argv); }
