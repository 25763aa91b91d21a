// All-reduce bandwidth: Shoal's Collective (mpi and gloo backends) beside bare MPI_Allreduce on
// the same bytes, 4 KiB to 256 MiB, run under mpirun:
//
//   mpirun -np 2 --oversubscribe --bind-to none [--allow-run-as-root] build/bench/shoal_allreduce_bench [--max-mib 256]
//
// Prints one table (rank 0): median time of each, algbw = bytes / time and busbw = algbw *
// 2(n-1)/n as nccl-tests define them, and each backend's ratio to bare MPI. A second table
// answers how the mpi backend should progress while backward computes: a 25 MiB all-reduce
// overlapped with a fixed amount of computation, on Shoal's communication thread vs
// MPI_Iallreduce polled with MPI_Test from the computing thread vs one after the other.
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "collective/collective.h"
#include "collective/gloo/collective_gloo.h"
#include "collective/mpi/collective_mpi.h"

namespace shoal {
namespace {

using Clock = std::chrono::steady_clock;

// The rendezvous store for the Gloo world: files in a directory every rank sees (one host).
class FileStore final : public RendezvousStore {
 public:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}
  void set(const std::string& key, const std::vector<char>& value) override {
    std::string path = file(key), tmp = path + ".tmp" + std::to_string(getpid());
    {
      std::ofstream out(tmp, std::ios::binary);
      out.write(value.data(), static_cast<std::streamsize>(value.size()));
    }
    std::filesystem::rename(tmp, path);
  }
  std::optional<std::vector<char>> try_get(const std::string& key) override {
    std::ifstream in(file(key), std::ios::binary);
    if (!in) return std::nullopt;
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }

 private:
  std::string file(const std::string& key) const {
    std::string name = key;
    for (char& c : name)
      if (c == '/') c = '_';
    return dir_ + "/" + name;
  }
  std::string dir_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median seconds of `op` over `iterations` (after one warm-up), the slowest rank's each time.
double time_op(int iterations, const std::function<void()>& op) {
  op();
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    MPI_Barrier(MPI_COMM_WORLD);
    auto t0 = Clock::now();
    op();
    double t = std::chrono::duration<double>(Clock::now() - t0).count(), slowest = 0;
    MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    times.push_back(slowest);
  }
  return median(times);
}

std::string human(std::size_t bytes) {
  char out[32];
  if (bytes >= (1u << 20))
    std::snprintf(out, sizeof(out), "%zu MiB", bytes >> 20);
  else
    std::snprintf(out, sizeof(out), "%zu KiB", bytes >> 10);
  return out;
}

// A fixed amount of arithmetic, about `ms` milliseconds on this machine, calling `poll` every
// ~0.5 ms.
double compute(int ms, const std::function<void()>& poll) {
  static double sink = 0;
  auto end = Clock::now() + std::chrono::milliseconds(ms);
  double x = 1.0;
  while (Clock::now() < end) {
    for (int i = 0; i < 20000; ++i) x = x * 1.0000001 + 1e-9;
    if (poll) poll();
  }
  sink += x;
  return sink;
}

int run(int argc, char** argv) {
  std::size_t max_bytes = std::size_t{256} << 20;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--max-mib") == 0) max_bytes = std::size_t(std::atol(argv[i + 1])) << 20;
  mpi::init();
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::string dir;
  if (rank == 0) {
    char tmpl[] = "/tmp/shoal-allreduce-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  dir = mpi::broadcast_string(dir, 0);
  FileStore store(dir);
  auto mpi_c = make_mpi_collective();
  std::unique_ptr<Collective> gloo_c;
  {
    GlooOptions o;
    o.hostname = "127.0.0.1";
    o.prefix = "bench/";
    o.timeout = std::chrono::duration<double>(120);
    gloo_c = make_gloo_collective(store, WorldInfo{rank, size, rank}, o);
  }
  const double bus = 2.0 * (size - 1) / size;
  std::vector<float> buffer(max_bytes / 4, 1.f);
  if (rank == 0) {
    char host[256] = {};
    gethostname(host, sizeof(host));
    std::printf("all-reduce (sum, float32, in place), %d ranks on %s (%u cores), median of several runs\n\n", size,
                host, std::thread::hardware_concurrency());
    std::printf(
        "| bytes | bare MPI_Allreduce ms | algbw GB/s | busbw GB/s | shoal mpi ms | busbw GB/s | vs bare | "
        "shoal gloo ms | busbw GB/s | vs bare |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  }
  for (std::size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
    const std::size_t count = bytes / 4;
    std::span<float> data(buffer.data(), count);
    const int iterations = static_cast<int>(std::clamp<std::size_t>((std::size_t{1} << 30) / bytes, 5, 50));
    double bare = time_op(iterations, [&] {
      MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(count), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    });
    double via_mpi = time_op(
        iterations, [&] { mpi_c->all_reduce(data, ReduceOp::sum, "bench")->wait(std::chrono::duration<double>(300)); });
    double via_gloo = time_op(iterations, [&] {
      gloo_c->all_reduce(data, ReduceOp::sum, "bench")->wait(std::chrono::duration<double>(300));
    });
    if (rank == 0) {
      auto gbs = [&](double t) { return static_cast<double>(bytes) / t / 1e9; };
      std::printf("| %s | %.3f | %.2f | %.2f | %.3f | %.2f | %.2f | %.3f | %.2f | %.2f |\n", human(bytes).c_str(),
                  bare * 1e3, gbs(bare), gbs(bare) * bus, via_mpi * 1e3, gbs(via_mpi) * bus, bare / via_mpi,
                  via_gloo * 1e3, gbs(via_gloo) * bus, bare / via_gloo);
      std::fflush(stdout);
    }
  }

  // Overlap: 25 MiB all-reduced while this rank computes for a fixed time.
  const std::size_t overlap_count = std::min<std::size_t>(buffer.size(), (std::size_t{25} << 20) / 4);
  std::span<float> ov(buffer.data(), overlap_count);
  const int compute_ms = 100;
  double alone_comm = time_op(5, [&] {
    MPI_Allreduce(MPI_IN_PLACE, ov.data(), static_cast<int>(ov.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  });
  double sequential = time_op(5, [&] {
    compute(compute_ms, {});
    MPI_Allreduce(MPI_IN_PLACE, ov.data(), static_cast<int>(ov.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  });
  double threaded = time_op(5, [&] {
    auto h = mpi_c->all_reduce(ov, ReduceOp::sum, "overlap");
    compute(compute_ms, {});
    h->wait(std::chrono::duration<double>(300));
  });
  double nonblocking = time_op(5, [&] {
    MPI_Request request;
    MPI_Iallreduce(MPI_IN_PLACE, ov.data(), static_cast<int>(ov.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &request);
    int done = 0;
    compute(compute_ms, [&] {
      if (!done) MPI_Test(&request, &done, MPI_STATUS_IGNORE);
    });
    MPI_Wait(&request, MPI_STATUS_IGNORE);
  });
  if (rank == 0) {
    std::printf("\noverlap: 25 MiB all-reduce (%.1f ms alone) with %d ms of computation, %d ranks\n\n",
                alone_comm * 1e3, compute_ms, size);
    std::printf("| how | ms | hidden communication |\n| --- | --- | --- |\n");
    auto hidden = [&](double t) { return std::clamp((sequential - t) / alone_comm, 0.0, 1.0) * 100; };
    std::printf("| one after the other (no overlap) | %.1f | 0%% |\n", sequential * 1e3);
    std::printf("| shoal mpi: communication thread | %.1f | %.0f%% |\n", threaded * 1e3, hidden(threaded));
    std::printf("| MPI_Iallreduce + MPI_Test every ~0.5 ms | %.1f | %.0f%% |\n", nonblocking * 1e3,
                hidden(nonblocking));
  }
  gloo_c.reset();
  mpi_c.reset();
  if (rank == 0) std::filesystem::remove_all(dir);
  mpi::finalize();
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  try {
    return shoal::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shoal_allreduce_bench: %s\n", e.what());
    return 1;
  }
}
