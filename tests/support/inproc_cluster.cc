#include "tests/support/inproc_cluster.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "base/error.h"
#include "coordinator/coordinator.h"
#include "data/dataset.h"
#include "ps/server_role.h"
#include "telemetry/metrics_file.h"
#include "tests/support/subprocess.h"
#include "worker/worker_job.h"

namespace shoal::testing {

void CapturingSink::write_line(std::string_view line) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    lines_.emplace_back(line);
  }
  if (echo_) LogSink::write_line(line);
  changed_.notify_all();
}

namespace {
bool has_all(const std::string& line, const std::vector<std::string>& needles) {
  for (const auto& n : needles)
    if (line.find(n) == std::string::npos) return false;
  return true;
}
}  // namespace

bool CapturingSink::wait_for(const std::vector<std::string>& needles, std::chrono::milliseconds timeout) {
  return wait_for_count(needles, 1, timeout);
}

bool CapturingSink::wait_for_count(const std::vector<std::string>& needles, int n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] {
    int found = 0;
    for (const auto& line : lines_) found += has_all(line, needles);
    return found >= n;
  });
}

int CapturingSink::count(const std::vector<std::string>& needles) const {
  std::lock_guard<std::mutex> lock(mutex_);
  int found = 0;
  for (const auto& line : lines_) found += has_all(line, needles);
  return found;
}

std::string CapturingSink::text() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  for (const auto& l : lines_) out += l + "\n";
  return out;
}

std::string CapturingSink::first_line_with(const std::string& needle) const {
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& l : lines_)
    if (l.find(needle) != std::string::npos) return l;
  return "";
}

JobConfig small_job() {
  JobConfig c;
  c.model = "mlp";
  c.data.train_limit = 1200;
  c.data.test_limit = 200;
  c.epochs = 1;
  c.batch_size = 50;
  c.eval_batch_size = 100;
  c.shard_size = 200;
  c.optimizer.lr = 0.05f;
  c.servers = 2;
  c.workers = 2;
  c.staleness = 2;
  c.chunk_kib = 64;
  c.heartbeat_seconds = 0.1;
  c.dead_after_seconds = 1.5;
  c.request_timeout_seconds = 10;
  c.startup_timeout_seconds = 20;
  c.threads = 1;
  c.progress = ProgressSetting::off;
  c.log_level = "debug";
  return c;
}

namespace {
std::atomic<int> g_clusters{0};

void write_idx(const std::string& path, const std::vector<std::uint32_t>& dims, const std::uint8_t* data,
               std::size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  const std::uint8_t magic[4] = {0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  out.write(reinterpret_cast<const char*>(magic), 4);
  for (std::uint32_t d : dims) {
    const std::uint8_t be[4] = {static_cast<std::uint8_t>(d >> 24), static_cast<std::uint8_t>(d >> 16),
                                static_cast<std::uint8_t>(d >> 8), static_cast<std::uint8_t>(d)};
    out.write(reinterpret_cast<const char*>(be), 4);
  }
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  SHOAL_REQUIRE(out.good(), IoError, "cannot write " << path);
}

void write_subset(const Dataset& d, const std::string& dir, const std::string& prefix) {
  write_idx(
      dir + "/" + prefix + "-images-idx3-ubyte",
      {static_cast<std::uint32_t>(d.count), static_cast<std::uint32_t>(d.height), static_cast<std::uint32_t>(d.width)},
      d.pixels.data(), d.pixels.size());
  std::vector<std::uint8_t> labels(d.labels.begin(), d.labels.end());
  write_idx(dir + "/" + prefix + "-labels-idx1-ubyte", {static_cast<std::uint32_t>(d.count)}, labels.data(),
            labels.size());
}

// The first samples of the job's IDX data set as small uncompressed files, written once per build
// tree and size (under tests/data-subsets, made complete under a temporary name, then renamed):
// every role of every cluster reads those instead of decompressing the whole 47 MB training file,
// which under ThreadSanitizer was most of each test's time. The samples are the ones train_limit
// and test_limit pick from the real files.
std::string dataset_subset(const std::string& source, std::int64_t train, std::int64_t test) {
  namespace fs = std::filesystem;
  const fs::path root(SHOAL_TEST_DATA_CACHE);
  const fs::path dir = root / ("idx-" + std::to_string(std::hash<std::string>{}(source)) + "-" + std::to_string(train) +
                               "-" + std::to_string(test));
  std::error_code ec;
  if (fs::exists(dir / "t10k-labels-idx1-ubyte", ec)) return dir.string();
  fs::create_directories(root, ec);
  std::string pattern = (root / "partial-XXXXXX").string();
  SHOAL_REQUIRE(mkdtemp(pattern.data()) != nullptr, IoError, "cannot make a directory like " << pattern);
  const TrainTestData data = load_train_test("idx", source, train, test);
  write_subset(data.train, pattern, "train");
  write_subset(data.test, pattern, "t10k");
  fs::rename(pattern, dir, ec);  // another test process may have made it first: theirs is as good
  if (ec) fs::remove_all(pattern, ec);
  return dir.string();
}
}  // namespace

InprocCluster::InprocCluster(JobConfig config, FaultPlan* faults, bool coordinator_over_tcp)
    : config_(std::move(config)),
      sink_(std::make_shared<CapturingSink>(std::getenv("SHOAL_TEST_ECHO_LOGS") != nullptr)),
      network_(faults) {
  // Unique endpoints: inproc names are per context, but a test may build several clusters.
  std::string tag = std::to_string(++g_clusters);
  config_.coordinator_address =
      coordinator_over_tcp ? "tcp://127.0.0.1:" + std::to_string(free_port()) : "inproc://coordinator-" + tag;
  config_.node_address = "inproc://ps-" + tag + "-";
  if (config_.data.format == DataFormat::idx && config_.data.train_limit > 0 && config_.data.test_limit > 0)
    config_.data.dir = dataset_subset(config_.data.dir, config_.data.train_limit, config_.data.test_limit);
}

InprocCluster::~InprocCluster() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    coordinator_stop_ = true;
    if (coordinator_ != nullptr) coordinator_->request_stop();
    for (auto& [rank, flag] : stops_) *flag = true;
  }
  for (auto& [name, role] : roles_)
    if (role.thread.joinable()) role.thread.join();
}

void InprocCluster::launch(const std::string& name, std::function<void()> body) {
  std::lock_guard<std::mutex> lock(mutex_);
  Role& role = roles_[name];
  if (role.thread.joinable()) {  // started again (a restarted server): its first run is over
    SHOAL_ASSERT(role.done, name << " was started again while it still runs");
    role.thread.join();
  }
  role.done = false;
  role.code = 0;
  role.failure.clear();
  role.thread = std::thread([this, name, body = std::move(body)] {
    int code = 0;
    std::string failure;
    try {
      body();
    } catch (...) {  // the role's boundary, as main() is for a process
      Failure f = failure_of(std::current_exception());
      code = static_cast<int>(f.code);
      failure = f.message;
      Logger(name, LogLevel::info, sink_).write(LogLevel::error, "exits " + std::to_string(code) + ": " + failure);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    roles_[name].done = true;
    roles_[name].code = code;
    roles_[name].failure = failure;
    finished_.notify_all();
  });
}

void InprocCluster::start_coordinator(double startup_timeout_seconds) {
  JobConfig c = config_;
  if (startup_timeout_seconds > 0) c.startup_timeout_seconds = startup_timeout_seconds;
  launch("coordinator", [this, c] {
    MetricsWriter metrics;
    Coordinator coordinator(network_, c, Logger("coordinator", LogLevel::debug, sink_), metrics);
    struct Registered {  // visible to the destructor exactly while it runs
      InprocCluster& cluster;
      explicit Registered(InprocCluster& c, Coordinator& coordinator) : cluster(c) {
        std::lock_guard<std::mutex> lock(cluster.mutex_);
        cluster.coordinator_ = &coordinator;
        if (cluster.coordinator_stop_) coordinator.request_stop();
      }
      ~Registered() {
        std::lock_guard<std::mutex> lock(cluster.mutex_);
        cluster.coordinator_ = nullptr;
      }
    } registered(*this, coordinator);
    coordinator.set_term_flag(&coordinator_term_);
    coordinator.run();
  });
}

void InprocCluster::start_server(int rank) {
  JobConfig c = config_;
  c.node_rank = rank;
  c.node_address = config_.node_address + std::to_string(rank);
  std::atomic<bool>* stop;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Started again: another address. ZeroMQ releases an inproc name asynchronously after its
    // socket closes, so the old one may still be taken (a new process's tcp port is not).
    if (const int starts = server_starts_[rank]++; starts > 0) c.node_address += "." + std::to_string(starts);
    auto& flag = server_stops_[rank];
    if (flag) retired_stops_.push_back(std::move(flag));  // its old thread may still read it
    flag = std::make_unique<std::atomic<bool>>(false);    // a new process: not stopped
    stop = flag.get();
  }
  launch("ps." + std::to_string(rank),
         [this, c, stop] { run_server_role(network_, c, Logger("ps", LogLevel::debug, sink_), stop); });
}

void InprocCluster::stop_server(int rank) {
  std::lock_guard<std::mutex> lock(mutex_);
  *server_stops_.at(rank) = true;
}

void InprocCluster::start_worker(int rank, const std::function<void(JobConfig&)>& edit) {
  JobConfig c = config_;
  c.node_rank = rank;
  if (edit) edit(c);
  std::atomic<bool>* stop;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto& flag = stops_[rank];
    if (flag) retired_stops_.push_back(std::move(flag));  // its old thread may still read it
    flag = std::make_unique<std::atomic<bool>>(false);
    stop = flag.get();
  }
  launch("worker." + std::to_string(rank),
         [this, c, stop] { run_worker_role(network_, c, Logger("worker", LogLevel::debug, sink_), stop); });
}

void InprocCluster::kill_coordinator() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    SHOAL_ASSERT(coordinator_ != nullptr, "kill_coordinator: no coordinator runs");
    coordinator_->vanish();
  }
  SHOAL_ASSERT(wait("coordinator", std::chrono::seconds(30)) >= 0, "the coordinator did not stop");
}

void InprocCluster::start_all() {
  start_coordinator();
  for (int i = 0; i < config_.servers; ++i) start_server(i);
  for (int i = 0; i < config_.workers; ++i) start_worker(i);
}

void InprocCluster::stop_worker(int rank) {
  std::lock_guard<std::mutex> lock(mutex_);
  *stops_.at(rank) = true;
}

int InprocCluster::wait(const std::string& role, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  bool done = finished_.wait_for(lock, timeout, [&] { return roles_.count(role) && roles_[role].done; });
  return done ? roles_[role].code : -1;
}

std::string InprocCluster::failure(const std::string& role) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = roles_.find(role);
  return it == roles_.end() ? "" : it->second.failure;
}

}  // namespace shoal::testing
