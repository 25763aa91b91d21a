// Parameter-server push+pull bandwidth beside its physical limits, measured in the same run.
//
//   build/bench/shoal_ps_bench [--rounds N] [--runs R]
//
// One worker (the real AsyncPsStrategy code path: zero-copy pushes of every chunk, wait for
// the acknowledgements, pull every chunk back into the parameter arena) against 1, 2 and 4
// parameter servers (the real ParameterServer, SGD applied to every pushed chunk), each with
// its own ZeroMQ context as if it were its own process, over loopback TCP. A 10M-float model
// (40 MB) moves 80 MB per round. Beside it: raw loopback TCP with iperf3 (one stream) and
// memcpy bandwidth. For small messages: push+pull round trips per second of a 4 KB model.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.h"
#include "core/error.h"
#include "core/process.h"
#include "launch/local_launcher.h"
#include "models/model.h"
#include "ps/parameter_server.h"
#include "ps/server_farm.h"
#include "worker/async_ps.h"

namespace shoal {
namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double memcpy_gbps() {
  const std::size_t bytes = std::size_t{400} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::vector<double> rates;
  for (int i = 0; i < 5; ++i) {
    auto t = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    rates.push_back(bytes / std::chrono::duration<double>(Clock::now() - t).count() / 1e9);
  }
  return median(rates);
}

// iperf3 over loopback, one stream, 3 s; 0 when iperf3 is not installed.
double iperf3_gbps() {
  if (system("command -v iperf3 >/dev/null 2>&1") != 0) return 0;
  int port = pick_free_port();
  std::string server = "iperf3 -s -1 -p " + std::to_string(port) + " >/dev/null 2>&1 &";
  if (system(server.c_str()) != 0) return 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::string cmd = "iperf3 -c 127.0.0.1 -p " + std::to_string(port) + " -t 3 -J 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return 0;
  std::string json;
  char buf[4096];
  while (std::size_t n = fread(buf, 1, sizeof(buf), p)) json.append(buf, n);
  pclose(p);
  auto at = json.find("\"sum_received\"");
  std::smatch m;
  std::string rest = at == std::string::npos ? "" : json.substr(at);
  if (!std::regex_search(rest, m, std::regex("\"bits_per_second\":\\s*([0-9.eE+]+)"))) return 0;
  return std::stod(m[1]) / 8 / 1e9;
}

// The bench's servers: never wait (one worker), momentum-free SGD with a tiny rate.
ServerOptions bench_server_options() {
  ServerOptions options;
  options.staleness = 1 << 20;
  options.optimizer.momentum = 0;
  options.schedule.base_lr = 1e-6f;
  return options;
}

// A model that is nothing but `in x out` parameters (+ out biases).
std::unique_ptr<Model> blob_model(Backend& backend, std::int64_t in, std::int64_t out) {
  auto m = std::make_unique<Model>("blob", Shape{1, 1, in}, out);
  m->add("fc", linear(in, out));
  m->build(backend, 1);
  return m;
}

// Seconds per push+pull round, one per round.
std::vector<double> push_pull_rounds(int servers, std::int64_t in, std::int64_t out, int rounds) {
  auto backend = make_backend(BackendOptions{Device::cpu(), 1});
  auto model = blob_model(*backend, in, out);
  ServerFarm farm(servers, model->params().parameter_count(), 1 << 20, 0.5f, "bench.worker", bench_server_options());  // 4 MiB chunks
  Network context;
  AsyncPsOptions options;
  AsyncPsStrategy strategy(context, farm.table(), "bench.worker", *backend, *model, Logger("worker", LogLevel::warn), options);
  std::vector<Parameter*> all;
  for (const auto& p : model->params().parameters()) all.push_back(p.get());
  std::vector<double> times;
  strategy.begin_step(*model, 0);  // first pull, outside the timing
  for (int r = 0; r < rounds; ++r) {
    auto t = Clock::now();
    strategy.gradients_ready(*model, all);  // pushes every chunk
    strategy.end_step(*model, r, 0);        // waits for acks, sends the pulls
    strategy.begin_step(*model, r + 1);     // waits for the pulled values
    times.push_back(std::chrono::duration<double>(Clock::now() - t).count());
  }
  return times;
}

int run(int argc, char** argv) {
  int rounds = 10, runs = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--rounds") rounds = std::stoi(argv[i + 1]);
    if (std::string(argv[i]) == "--runs") runs = std::stoi(argv[i + 1]);
  }
  const std::int64_t in = 1000, out = 10000;  // 10,010,000 parameters
  const double bytes = 2.0 * 4 * (in * out + out);
  double tcp = iperf3_gbps();
  double copy = memcpy_gbps();
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  std::printf(
      "# parameter-server push+pull, 1 worker, %.1f MB model (%.0f MB moved per round), loopback TCP,\n"
      "# median of %d runs x %d rounds; %ld cores on %s\n",
      bytes / 2 / 1e6, bytes / 1e6, runs, rounds, sysconf(_SC_NPROCESSORS_ONLN), host);
  std::printf("| what | time per round | GB/s | vs raw loopback TCP |\n| --- | ---: | ---: | ---: |\n");
  for (int servers : {1, 2, 4}) {
    std::vector<double> all;
    for (int r = 0; r < runs; ++r) {
      auto t = push_pull_rounds(servers, in, out, rounds);
      all.insert(all.end(), t.begin(), t.end());
    }
    double s = median(all), gbps = bytes / s / 1e9;
    std::printf("| push+pull, %d server%s | %.1f ms | %.2f | %s |\n", servers, servers > 1 ? "s" : "", 1e3 * s, gbps,
                tcp > 0 ? (std::to_string(static_cast<int>(100 * gbps / tcp + 0.5)) + "%").c_str() : "n/a");
  }
  if (tcp > 0)
    std::printf("| raw loopback TCP, iperf3, 1 stream | | %.2f | 100%% |\n", tcp);
  else
    std::printf("| raw loopback TCP | | iperf3 not installed (launch/setup-debian.sh --bench) | |\n");
  std::printf("| memcpy, 400 MiB | | %.2f | |\n", copy);

  // Small messages: a 4 KB model on one server, as many rounds as fit in 2 s.
  {
    auto backend = make_backend(BackendOptions{Device::cpu(), 1});
    auto model = blob_model(*backend, 31, 32);  // 1024 parameters
    ServerFarm farm(1, model->params().parameter_count(), 1 << 20, 0.5f, "bench.worker", bench_server_options());
    Network context;
    AsyncPsStrategy strategy(context, farm.table(), "bench.worker", *backend, *model, Logger("worker", LogLevel::warn), {});
    std::vector<Parameter*> all;
    for (const auto& p : model->params().parameters()) all.push_back(p.get());
    strategy.begin_step(*model, 0);
    std::vector<double> rates;
    for (int r = 0; r < runs; ++r) {
      int n = 0;
      auto start = Clock::now();
      while (Clock::now() - start < std::chrono::seconds(2)) {
        strategy.gradients_ready(*model, all);
        strategy.end_step(*model, n, 0);
        strategy.begin_step(*model, n + 1);
        ++n;
      }
      rates.push_back(n / std::chrono::duration<double>(Clock::now() - start).count());
    }
    std::printf("| 4 KB push+pull, 1 server | %.0f us | %.0f round trips/s | |\n", 1e6 / median(rates), median(rates));
  }
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) {
  shoal::tune_allocator();  // as every shoal process does
  try {
    return shoal::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shoal_ps_bench: error: %s\n", e.what());
    return 1;
  }
}
