// Parameter-server push+pull bandwidth beside the limits that bind it, measured in the same run.
//
//   build/bench/shoal_ps_bench [--rounds N] [--runs R] [--quick] [--small | --big]
//
// Table 1, one worker. The real parameter-server client that AsyncPsStrategy trains with
// (ps/client: zero-copy pushes of every chunk, each answered with that chunk's new values,
// copied into the parameter buffer) against 1, 2 and 4 parameter servers (the real
// ParameterServer, SGD applied to every pushed chunk), each with its own ZeroMQ context as if
// it were its own process, over loopback TCP. A 10M-float model (40 MB) moves 80 MB per round.
// Each row is compared with the raw loopback TCP it could at best reach: iperf3 with 1 MiB
// writes, one stream for one server, -P N streams for N servers (the worker holds one
// connection per server). Also: iperf3 with its default writes, memcpy bandwidth, and
// push+pull round trips per second of a 4 KB model beside bare ZeroMQ round trips of 4 KB.
// Targets are printed with PASS or MISS.
//
// Table 2, W workers. W = 1, 2, 4, 8 synthetic workers, each a thread with its own ZeroMQ
// context running the same client with random gradients and no compute, against one server
// and against two: the servers' aggregate ingress (gradients pushed) and egress (values
// pulled) and the rounds per second, in total and per worker, as W grows.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_table.h"
#include "base/error.h"
#include "base/process.h"
#include "compute/rng.h"
#include "launch/local_launcher.h"
#include "ps/client/ps_client.h"
#include "ps/parameter_server.h"
#include "ps/farm/server_farm.h"

namespace shoal {
namespace {

using namespace bench;  // the table helpers of bench/bench_table.h

void sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

// ---------------------------------------------------------------------------------------------
// Formatting beyond bench/bench_table.h.

// 12345.6 -> "12,346"
std::string thousands(double value) {
  std::string digits = std::to_string(static_cast<long long>(value + 0.5)), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string percent(double fraction) { return format("%.0f%%", 100 * fraction); }

// "≥ 70%: PASS", or "n/a" in place of the verdict when there is nothing to compare with.
struct Target {
  std::string what;
  std::optional<bool> met;
  std::string cell() const { return what + ": " + (met ? (*met ? "PASS" : "MISS") : "n/a"); }
};

// ---------------------------------------------------------------------------------------------
// The command line.

struct Plan {
  int rounds = 10;              // push+pull rounds per run (table 1)
  int runs = 3;                 // runs of everything; windows per row in table 2
  int iperf_seconds = 2;        // each iperf3 run
  double rtt_seconds = 2;       // each run of 4 KB round trips
  double window_seconds = 1;    // each measuring window of table 2
  double warmup_seconds = 0.3;  // table 2: after every worker has its first pull
  std::string only;             // "small" or "big": one measurement alone (for a profiler)
};

constexpr const char* kUsage =
    "usage: shoal_ps_bench [--rounds N] [--runs R] [--quick]\n"
    "  --rounds N  push+pull rounds per run, one worker (default 10; 3 with --quick)\n"
    "  --runs R    runs of each measurement, iperf3 included; windows per row of the\n"
    "              W-worker table (default 3; 1 with --quick)\n"
    "  --quick     short runs for a smoke test (under a minute); --rounds/--runs still apply\n"
    "  --small     only the 4 KB round trips, --runs times (to run under a profiler)\n"
    "  --big       only the 40 MB rounds against 1 server (to run under a profiler)\n";

int positive_int(const std::string& flag, const char* text) { return bench::positive_int(flag, text, kUsage); }

Plan parse(int argc, char** argv) {
  Plan plan;
  std::optional<int> rounds, runs;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--quick") {
      plan = Plan{.rounds = 3,
                  .runs = 1,
                  .iperf_seconds = 1,
                  .rtt_seconds = 0.5,
                  .window_seconds = 0.5,
                  .warmup_seconds = 0.2,
                  .only = plan.only};
    } else if (flag == "--small") {
      plan.only = "small";
    } else if (flag == "--big") {
      plan.only = "big";
    } else if (flag == "--rounds" || flag == "--runs") {
      if (i + 1 == argc) SHOAL_THROW(ConfigError, flag << " needs a value\n" << kUsage);
      (flag == "--rounds" ? rounds : runs) = positive_int(flag, argv[++i]);
    } else if (flag == "--help" || flag == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else {
      SHOAL_THROW(ConfigError, "unknown flag '" << flag << "'\n" << kUsage);
    }
  }
  if (rounds) plan.rounds = *rounds;
  if (runs) plan.runs = *runs;
  return plan;
}

// ---------------------------------------------------------------------------------------------
// The machine.

std::string machine() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) + " cores, " + cpu_model() + ", host " + host;
}

double memcpy_gbps() {
  const std::size_t bytes = std::size_t{400} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::vector<double> rates;
  for (int i = 0; i < 5; ++i) {
    auto t = Clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    rates.push_back(static_cast<double>(bytes) / seconds_since(t) / 1e9);
  }
  return spread(rates).median;
}

// ---------------------------------------------------------------------------------------------
// iperf3 over loopback.

bool have_iperf3() { return std::system("command -v iperf3 >/dev/null 2>&1") == 0; }

// Whether a socket listens on `port` (any local address), from the kernel's tables: probing
// with a connection would use up the test of a one-off (-1) iperf3 server.
bool listening(int port) {
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      auto colon = local.rfind(':');
      if (state == "0A" && colon != std::string::npos &&
          std::strtol(local.c_str() + colon + 1, nullptr, 16) == port)  // 0A: LISTEN
        return true;
    }
  }
  return false;
}

// `iperf3 -s -1` on a free loopback port, for one test. Started and waited for until it
// listens (bounded polling); never left behind: reaped after its test, terminated if it
// outlives it, and killed by the kernel if this process dies first (PR_SET_PDEATHSIG).
class IperfServer {
 public:
  IperfServer() : port_(pick_free_port()) {
    std::string port = std::to_string(port_);
    std::vector<const char*> argv = {"iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", port.c_str(), nullptr};
    pid_t parent = getpid();
    pid_ = fork();
    if (pid_ < 0) SHOAL_THROW(IoError, "fork: " << std::strerror(errno));
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(127);
      int null = open("/dev/null", O_WRONLY);
      dup2(null, STDOUT_FILENO);
      dup2(null, STDERR_FILENO);
      execvp(argv[0], const_cast<char* const*>(argv.data()));
      _exit(127);
    }
    for (int tries = 0; tries < 300; ++tries) {  // 3 s
      if (listening(port_)) return;
      if (reaped(0)) SHOAL_THROW(IoError, "iperf3 -s exited before listening on port " << port_);
      sleep_ms(10);
    }
    stop(0);
    SHOAL_THROW(TimeoutError, "iperf3 -s did not listen on port " << port_ << " within 3 s");
  }
  ~IperfServer() { stop(200); }  // 2 s for the server to end by itself after its test
  IperfServer(const IperfServer&) = delete;
  IperfServer& operator=(const IperfServer&) = delete;

  int port() const { return port_; }

 private:
  // Whether the server has exited (and is reaped), polling for up to `tries` x 10 ms.
  bool reaped(int tries) {
    for (int i = 0;; ++i) {
      if (pid_ < 0 || waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      if (i >= tries) return false;
      sleep_ms(10);
    }
  }
  // A one-off server exits after its test; one that does not within `tries` x 10 ms is
  // terminated, then killed.
  void stop(int tries) {
    if (reaped(tries)) return;
    kill(pid_, SIGTERM);
    if (reaped(100)) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  int port_;
  pid_t pid_ = -1;
};

// One client run against a fresh one-off server: GB/s received. Throws on failure.
double iperf3_run(const std::string& args, int seconds) {
  IperfServer server;
  std::string cmd = "iperf3 -c 127.0.0.1 -p " + std::to_string(server.port()) + " -t " + std::to_string(seconds) +
                    " --connect-timeout 3000 -J " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) SHOAL_THROW(IoError, "cannot run " << cmd);
  std::string json;
  char buf[4096];
  while (std::size_t n = fread(buf, 1, sizeof(buf), p)) json.append(buf, n);
  int status = pclose(p);
  std::smatch m;
  auto at = json.find("\"sum_received\"");
  std::string rest = at == std::string::npos ? "" : json.substr(at);
  if (status != 0 || !std::regex_search(rest, m, std::regex("\"bits_per_second\":\\s*([0-9.eE+]+)"))) {
    std::smatch error;
    std::regex_search(json, error, std::regex("\"error\":\\s*\"([^\"]*)\""));
    SHOAL_THROW(IoError, "iperf3 " << args << " failed" << (error.empty() ? "" : ": " + error[1].str()));
  }
  return std::stod(m[1]) / 8 / 1e9;
}

struct IperfCase {
  const char* label;
  const char* args;
};
constexpr IperfCase kIperfCases[] = {
    {"iperf3, 1 stream, default writes (reference)", ""},
    {"iperf3 -l 1M, 1 stream", "-l 1M"},
    {"iperf3 -l 1M -P 2", "-l 1M -P 2"},
    {"iperf3 -l 1M -P 4", "-l 1M -P 4"},
};

struct Iperf {
  IperfCase what;
  int runs = 0;
  std::vector<double> gbps;  // one per run that succeeded
  std::string failure;       // the last failure, if any run failed

  std::optional<Spread> result() const { return gbps.empty() ? std::nullopt : std::optional<Spread>(spread(gbps)); }
  std::string cell() const {
    if (gbps.empty()) return "failed: " + failure;
    std::string failed = std::to_string(runs - static_cast<int>(gbps.size())) + " of " + std::to_string(runs) +
                         " runs failed: " + failure;
    return with_range(spread(gbps), "%.2f", " GB/s") + (failure.empty() ? "" : " (" + failed + ")");
  }
};

Iperf measure_iperf3(IperfCase what, const Plan& plan) {
  Iperf m{what, plan.runs, {}, {}};
  for (int r = 0; r < plan.runs; ++r) {
    try {
      m.gbps.push_back(iperf3_run(what.args, plan.iperf_seconds));
    } catch (const Error& e) {
      m.failure = e.what();
    }
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Shoal: servers and synthetic workers.

// The bench's servers: never wait for a slow worker, momentum-free SGD with a tiny rate.
ServerOptions bench_server_options() {
  ServerOptions options;
  options.staleness = 1 << 20;
  options.optimizer.momentum = 0;
  options.schedule.base_lr = 1e-6f;
  return options;
}

constexpr std::int64_t kChunkElements = 1 << 20;  // 4 MiB chunks at most

// A model that is nothing but `in x out` parameters (+ out biases).
struct Blob {
  std::int64_t in, out;
  std::int64_t elements() const { return in * out + out; }
  double bytes() const { return 4.0 * static_cast<double>(elements()); }
};

// One synthetic worker: a gradient buffer of fixed random values (the servers reject
// non-finite gradients), a parameter buffer the pulled values are copied into, its own ZeroMQ
// context as if it were its own process, and the real parameter-server client; no model, no
// compute. Each round pushes every chunk of every server, lowest key first (as a worker's last
// call of a step does), each push asking for its chunks back. Construction does the first pull.
class BenchWorker {
 public:
  BenchWorker(const PartitionTable& table, const std::string& id, Blob blob, std::uint64_t seed)
      : grads_(std::make_shared<std::vector<float>>(static_cast<std::size_t>(blob.elements()))),
        values_(static_cast<std::size_t>(blob.elements())),
        client_(network_, table, id, Logger("worker", LogLevel::warn), PsClientOptions{},
                [this] { return values_.data(); }) {
    Rng rng(seed);
    for (float& g : *grads_) g = static_cast<float>(2 * rng.uniform() - 1);
    for (const ServerRange& server : table.servers) {
      keys_.emplace_back();
      for (std::uint32_t k = server.first_key; k < server.end_key; ++k) keys_.back().push_back(k);
    }
    client_.await_parameters();
  }

  // Pushes every chunk and moves the clock; the replies bring the values for the next round.
  void push() {
    const PushSource source{grads_->data(), grads_};
    for (std::size_t s = 0; s < keys_.size(); ++s) client_.push(s, keys_[s], source);
    client_.advance_clock();
  }
  // Waits for every reply: the pulled values.
  void pull() { client_.await_parameters(); }

 private:
  Network network_;                            // outlives the client's sockets
  std::shared_ptr<std::vector<float>> grads_;  // shared: a queued frame keeps it alive
  std::vector<float> values_;
  PsClient client_;
  std::vector<std::vector<std::uint32_t>> keys_;  // by server
};

// One worker, `plan.runs` runs, each against fresh servers: `rounds` push+pull rounds, or as
// many as fit in `seconds`.
struct Rounds {
  std::vector<double> times;  // seconds per round, every round of every run
  std::vector<double> rates;  // rounds per second, one per run
};

// The limit for small messages: bare ZeroMQ round trips of one 4 KB frame each way between a
// DEALER and a ROUTER in two contexts over loopback TCP (the sockets Shoal uses, nothing else).
std::vector<double> zmq_round_trips(const Plan& plan) {
  std::vector<double> rates;
  for (int r = 0; r < plan.runs; ++r) {
    zmq::context_t server_context(1), client_context(1);
    zmq::socket_t router(server_context, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.bind("tcp://127.0.0.1:*");
    const std::string endpoint = router.get(zmq::sockopt::last_endpoint);
    std::atomic<bool> stop{false};
    std::thread echo([&] {
      zmq::pollitem_t item{router.handle(), 0, ZMQ_POLLIN, 0};
      while (!stop) {
        zmq::poll(&item, 1, std::chrono::milliseconds(10));
        zmq::message_t id, body;
        while (router.recv(id, zmq::recv_flags::dontwait)) {
          (void)router.recv(body);
          router.send(id, zmq::send_flags::sndmore);
          router.send(body, zmq::send_flags::none);
        }
      }
    });
    zmq::socket_t dealer(client_context, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.connect(endpoint);
    std::vector<char> payload(4096, 1);
    int n = 0;
    auto start = Clock::now();
    while (seconds_since(start) < plan.rtt_seconds) {
      dealer.send(zmq::buffer(payload));
      zmq::message_t reply;
      (void)dealer.recv(reply);
      ++n;
    }
    rates.push_back(n / seconds_since(start));
    stop = true;
    echo.join();
  }
  return rates;
}

Rounds one_worker_rounds(int servers, Blob blob, const Plan& plan, int rounds, double seconds) {
  Rounds result;
  for (int r = 0; r < plan.runs; ++r) {
    ServerFarm farm(servers, blob.elements(), kChunkElements, 0.5f, "bench.worker", bench_server_options());
    BenchWorker worker(farm.table(), "bench.worker", blob, 1);
    auto start = Clock::now();
    int n = 0;
    for (; n < rounds && seconds_since(start) < seconds; ++n) {
      auto t = Clock::now();
      worker.push();
      worker.pull();
      result.times.push_back(seconds_since(t));
    }
    result.rates.push_back(n / seconds_since(start));
  }
  return result;
}

// W workers, each a thread, against `servers` servers; the servers' load over back-to-back
// windows once every worker is running.
struct Load {
  std::vector<double> ingress, egress, total;  // GB/s pushed, GB/s pulled, rounds/s; per window
  std::vector<double> per_worker;              // rounds/s of each worker in each window
};

Load worker_load(int workers, int servers, Blob blob, const Plan& plan) {
  std::vector<std::string> ids;
  for (int i = 0; i < workers; ++i) ids.push_back("bench.worker." + std::to_string(i));
  ServerFarm farm(servers, blob.elements(), kChunkElements, 0.5f, ids, bench_server_options());

  struct Counters {
    std::atomic<std::int64_t> pushes{0}, pulls{0};
  };
  std::vector<Counters> counters(static_cast<std::size_t>(workers));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
  std::atomic<int> ready{0};
  std::atomic<bool> stop{false}, failed{false};
  // Stops and joins the workers on every way out (each finishes its round first).
  struct Threads {
    std::atomic<bool>& stop;
    std::vector<std::thread> list;
    ~Threads() { join(); }
    void join() {
      stop = true;
      for (auto& t : list)
        if (t.joinable()) t.join();
    }
  } threads{stop, {}};
  auto join = [&] {  // and rethrows the first worker's failure
    threads.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  };
  for (int i = 0; i < workers; ++i)
    threads.list.emplace_back([&, i] {
      auto u = static_cast<std::size_t>(i);
      try {
        BenchWorker worker(farm.table(), ids[u], blob, 1000 + u);
        ++ready;
        while (!stop) {
          worker.push();
          ++counters[u].pushes;
          worker.pull();
          ++counters[u].pulls;
        }
      } catch (...) {
        errors[u] = std::current_exception();
        failed = true;
      }
    });

  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (ready < workers && !failed && Clock::now() < deadline) sleep_ms(5);
  if (ready < workers) {
    join();  // rethrows a worker's failure
    SHOAL_THROW(TimeoutError, workers << " workers did not start within 60 s");
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(plan.warmup_seconds));

  Load load;
  auto snapshot = [&] {
    std::vector<std::int64_t> s;
    for (auto& c : counters) s.insert(s.end(), {c.pushes.load(), c.pulls.load()});
    return s;
  };
  auto start = Clock::now();
  auto before = snapshot();
  for (int w = 0; w < plan.runs && !failed; ++w) {
    auto t = Clock::now();
    std::this_thread::sleep_until(start + std::chrono::duration<double>((w + 1) * plan.window_seconds));
    auto after = snapshot();
    double dt = seconds_since(t);
    std::int64_t pushed = 0, pulled = 0;
    for (std::size_t i = 0; i < counters.size(); ++i) {
      pushed += after[2 * i] - before[2 * i];
      pulled += after[2 * i + 1] - before[2 * i + 1];
      load.per_worker.push_back(static_cast<double>(after[2 * i + 1] - before[2 * i + 1]) / dt);
    }
    load.ingress.push_back(static_cast<double>(pushed) * blob.bytes() / dt / 1e9);
    load.egress.push_back(static_cast<double>(pulled) * blob.bytes() / dt / 1e9);
    load.total.push_back(static_cast<double>(pulled) / dt);
    before = std::move(after);
  }
  join();
  return load;
}

// ---------------------------------------------------------------------------------------------
// The tables.

constexpr Blob kBigModel{1000, 10000};    // 10,010,000 parameters, 40 MB
constexpr Blob kSmallModel{31, 32};       // 1,024 parameters, 4 KB
constexpr Blob kWorkerModel{1000, 1000};  // 1,001,000 parameters, 4 MB
constexpr double kRoundTripTarget = 10000;
constexpr double kForever = std::numeric_limits<double>::infinity();

struct PushPullCase {
  int servers;
  std::size_t iperf;  // index into kIperfCases: the limit this row is compared with
  double target;      // the fraction of it to reach
};
constexpr PushPullCase kPushPullCases[] = {{1, 1, 0.70}, {2, 2, 0.80}, {4, 3, 0.80}};

void one_worker_table(const Plan& plan) {
  std::vector<Iperf> iperf;
  const bool iperf3 = have_iperf3();
  if (iperf3)
    for (IperfCase c : kIperfCases) iperf.push_back(measure_iperf3(c, plan));
  const double copy = memcpy_gbps();

  const double bytes = 2 * kBigModel.bytes();  // pushed and pulled
  std::printf(
      "# push+pull, 1 worker: %.1f MB model (%.0f MB moved per round), loopback TCP, %d run%s x %d rounds;\n"
      "# iperf3: %d run%s x %d s each. Figures: median (min–max); time per round over every round of every run.\n",
      kBigModel.bytes() / 1e6, bytes / 1e6, plan.runs, plan.runs > 1 ? "s" : "", plan.rounds, plan.runs,
      plan.runs > 1 ? "s" : "", plan.iperf_seconds);
  print_row({"what", "time per round", "throughput", "vs the limit that binds it", "target"});
  print_row({"---", "---:", "---:", "---:", "---"});

  std::vector<Target> targets;
  for (PushPullCase c : kPushPullCases) {
    Spread time = spread(one_worker_rounds(c.servers, kBigModel, plan, plan.rounds, kForever).times);
    Spread gbps = inverse(time, bytes / 1e9);
    std::optional<Spread> limit = iperf3 ? iperf[c.iperf].result() : std::nullopt;
    std::string vs = limit ? percent(gbps.median / limit->median) + " of " + iperf[c.iperf].what.label : "n/a";
    Target target{"≥ " + percent(c.target),
                  limit ? std::optional<bool>(gbps.median >= c.target * limit->median) : std::nullopt};
    print_row({"push+pull, " + std::to_string(c.servers) + " server" + (c.servers > 1 ? "s" : ""),
               with_range(scaled(time, 1e3), "%.1f", " ms"), with_range(gbps, "%.2f", " GB/s"), vs, target.cell()});
    targets.push_back(target);
  }

  Rounds small = one_worker_rounds(1, kSmallModel, plan, INT_MAX, plan.rtt_seconds);
  Spread rtt = spread(small.times), rate = spread(small.rates);
  Target rtt_target{"≥ " + thousands(kRoundTripTarget) + "/s", rate.median >= kRoundTripTarget};
  Spread bare = spread(zmq_round_trips(plan));
  print_row({"4 KB push+pull, 1 server", with_range(scaled(rtt, 1e6), "%.0f", " us"),
             with_range(rate, thousands, " round trips/s"), percent(rate.median / bare.median) + " of bare ZeroMQ",
             rtt_target.cell()});
  targets.push_back(rtt_target);
  print_row({"bare ZeroMQ 4 KB round trip (reference)", with_range(inverse(bare, 1e6), "%.0f", " us"),
             with_range(bare, thousands, " round trips/s"), "", ""});

  if (!iperf3)
    print_row({"raw loopback TCP", "", "iperf3 not installed (launch/setup-debian.sh --bench installs it)", "n/a", ""});
  for (const Iperf& m : iperf) print_row({m.what.label, "", m.cell(), "", ""});
  print_row({"memcpy, 400 MiB", "", format("%.2f", copy) + " GB/s", "", ""});

  int met = 0, judged = 0;
  for (const Target& t : targets) {
    judged += t.met.has_value();
    met += t.met.value_or(false);
  }
  std::printf("\ntargets met: %d of %d", met, static_cast<int>(targets.size()));
  if (judged < static_cast<int>(targets.size()))
    std::printf(" (%d not judged: no iperf3 figure)", static_cast<int>(targets.size()) - judged);
  std::printf("\n");
}

void worker_table(const Plan& plan) {
  std::printf(
      "\n# W workers against 1 and 2 servers: each worker a thread with its own ZeroMQ context running\n"
      "# the parameter-server client with random gradients (fixed seeds) and no compute, on a %.1f MB\n"
      "# model (%s floats): a round pushes and pulls %.1f MB. Staleness unbounded, so workers never\n"
      "# wait on each other.\n"
      "# %d window%s of %.1f s per row after a %.1f s warm-up; ingress = gradients pushed to the servers,\n"
      "# egress = values pulled from them. Median (min–max) over windows; per worker over workers and windows.\n",
      kWorkerModel.bytes() / 1e6, thousands(static_cast<double>(kWorkerModel.elements())).c_str(),
      kWorkerModel.bytes() / 1e6, plan.runs, plan.runs > 1 ? "s" : "", plan.window_seconds, plan.warmup_seconds);
  print_row({"workers", "servers", "ingress", "egress", "rounds/s, all workers", "rounds/s per worker"});
  print_row({"---:", "---:", "---:", "---:", "---:", "---:"});
  for (int servers : {1, 2})
    for (int workers : {1, 2, 4, 8}) {
      Load load = worker_load(workers, servers, kWorkerModel, plan);
      print_row({std::to_string(workers), std::to_string(servers), with_range(spread(load.ingress), "%.2f", " GB/s"),
                 with_range(spread(load.egress), "%.2f", " GB/s"), with_range(spread(load.total), "%.0f"),
                 with_range(spread(load.per_worker), "%.0f")});
      std::fflush(stdout);
    }
}

int run(int argc, char** argv) {
  Plan plan = parse(argc, argv);
  std::printf("# shoal_ps_bench on %s\n\n", machine().c_str());
  std::fflush(stdout);
  if (plan.only == "big") {
    Spread time = spread(one_worker_rounds(1, kBigModel, plan, plan.rounds, kForever).times);
    std::printf("40 MB push+pull, 1 server: %s\n", with_range(scaled(time, 1e3), "%.1f", " ms").c_str());
    return 0;
  }
  if (plan.only == "small") {
    Spread rate = spread(one_worker_rounds(1, kSmallModel, plan, INT_MAX, plan.rtt_seconds).rates);
    std::printf("4 KB push+pull, 1 server: %s round trips/s\n", with_range(rate, thousands, "").c_str());
    return 0;
  }
  one_worker_table(plan);
  std::fflush(stdout);
  worker_table(plan);
  return 0;
}

}  // namespace
}  // namespace shoal

int main(int argc, char** argv) { return shoal::bench::main_of("shoal_ps_bench", shoal::run, argc, argv); }
