// Sync jobs as real processes: `shoal launch --local` with each backend that runs here, the MPI
// equivalence under mpirun, and a rank killed with SIGKILL mid-epoch (the others end within
// the timeout with one line naming the lost rank, and the launcher exits non-zero).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <thread>

#include "tests/support/subprocess.h"
#include "tests/support/sync_steps.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::free_port;
using testing::read_file;
using testing::Subprocess;
using testing::TempDir;

const std::string kShoal = SHOAL_BINARY;
const std::string kSteps = SHOAL_SYNC_STEPS_BINARY;
const std::string kJob = std::string(SHOAL_SOURCE_DIR) + "/examples/fashion_mnist_sync.ini";

std::vector<std::string> mpirun(int np) {
  std::vector<std::string> argv{SHOAL_MPIRUN, "-np", std::to_string(np), "--oversubscribe", "--bind-to", "none"};
  if (geteuid() == 0) argv.push_back("--allow-run-as-root");
  return argv;
}

bool wait_for_output(Subprocess& p, const std::regex& pattern, std::chrono::milliseconds timeout,
                     std::smatch* match = nullptr) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string out = p.output();
    std::smatch m;
    if (std::regex_search(out, m, pattern)) {
      if (match != nullptr) {
        static std::string keep;
        keep = out;
        std::regex_search(keep, *match, pattern);
      }
      return true;
    }
    if (!p.running()) return false;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<float> out(bytes.size() / 4);
  std::memcpy(out.data(), bytes.data(), out.size() * 4);
  return out;
}

// Small and quick: 2 ranks, 1 epoch of `samples` samples.
std::vector<std::string> small_job(const std::string& backend, int samples = 4096) {
  return {kJob,
          "--sync.backend=" + backend,
          "--train.epochs=1",
          "--data.train_limit=" + std::to_string(samples),
          "--data.test_limit=1000",
          "--threads=1",
          "--progress=off"};
}

TEST(SyncLaunch, LocalJobRunsWithEachBackend) {
  for (const std::string backend : {"gloo", "mpi"}) {
    std::vector<std::string> argv{kShoal, "launch"};
    auto job = small_job(backend);
    argv.insert(argv.end(), job.begin(), job.end());
    argv.push_back("--local");
    auto r = testing::run(argv, {}, 3min);
    EXPECT_EQ(r.exit_code, 0) << backend << "\n" << r.output;
    EXPECT_NE(r.output.find("all-reduce over " + backend), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("final test accuracy"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("epoch 1/1"), std::string::npos) << r.output;
  }
}

TEST(SyncLaunch, MpiBackendWithoutMpirunIsAClearConfigurationError) {
  std::vector<std::string> argv{kShoal, "worker"};
  auto job = small_job("mpi");
  argv.insert(argv.end(), job.begin(), job.end());
  auto r = testing::run(argv, {}, 1min);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("sync.backend = mpi needs the job started by mpirun"), std::string::npos) << r.output;
  argv = {kShoal, "worker"};
  job = small_job("gloo");
  argv.insert(argv.end(), job.begin(), job.end());
  r = testing::run(argv, {}, 1min);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("node.rank"), std::string::npos) << r.output;
}

// Two ranks x 32 over MPI end where one process with batch 64 ends (tolerance: see
// sync_equivalence_test.cc).
TEST(SyncEquivalence, TwoRanksOverMpiEqualOneProcess) {
  TempDir dir;
  for (const auto& [model, sync_bn] : {std::pair<std::string, bool>{"cnn", false}, {"cnn_bn", true}}) {
    auto argv = mpirun(2);
    argv.insert(argv.end(), {kSteps, dir.file("params.bin"), model, sync_bn ? "1" : "0", sync_bn ? "0.002" : "0.01"});
    auto r = testing::run(argv, {}, 5min);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    SyncRun run;
    run.model = model;
    run.sync_batch_norm = sync_bn;
    if (sync_bn) run.lr = 0.002f;
    Equivalence e = check_equivalence(run, read_floats(dir.file("params.bin")));
    EXPECT_TRUE(e.ok()) << model << " over mpi differs by " << e.difference << ", tolerance " << e.tolerance;
    std::printf("%s over mpi, %d steps: difference %.3g, tolerance %.3g\n", model.c_str(), run.steps, e.difference,
                e.tolerance);
  }
}

// Rank 1 of a Gloo job killed with SIGKILL mid-epoch: rank 0 (and the coordinator it runs) end
// the job within the liveness timeout, with one line naming rank 1, and exit 10 (peer lost).
TEST(SyncFailure, GlooRankKilledMidEpochEndsTheJobNamingIt) {
  std::string coordinator = "tcp://127.0.0.1:" + std::to_string(free_port());
  std::vector<std::unique_ptr<Subprocess>> ranks;
  for (int r = 0; r < 2; ++r) {
    std::vector<std::string> argv{kShoal, "worker"};
    auto job = small_job("gloo", 60000);
    argv.insert(argv.end(), job.begin(), job.end());
    argv.insert(argv.end(),
                {"--node.rank=" + std::to_string(r), "--cluster.coordinator=" + coordinator,
                 "--cluster.heartbeat_seconds=0.2", "--cluster.dead_after_seconds=2", "--sync.timeout_seconds=30"});
    ranks.push_back(std::make_unique<Subprocess>(argv));
  }
  ASSERT_TRUE(wait_for_output(*ranks[1], std::regex("training epoch 1"), 2min)) << ranks[1]->output();
  ASSERT_TRUE(wait_for_output(*ranks[0], std::regex("training epoch 1"), 1min)) << ranks[0]->output();
  std::this_thread::sleep_for(300ms);  // mid-epoch: a few steps in
  auto killed = std::chrono::steady_clock::now();
  ranks[1]->signal(SIGKILL);
  int code = ranks[0]->wait(30s);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  std::string out = ranks[0]->output();
  EXPECT_EQ(code, 10) << out;
  EXPECT_LT(seconds, 15) << "rank 0 took " << seconds << " s to notice";
  EXPECT_NE(out.find("shoal: error: the job failed (peer lost): lost worker.1 (rank 1)"), std::string::npos) << out;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double kSlowdown = 3;  // every process runs a few times slower under a sanitizer
#else
constexpr double kSlowdown = 1;
#endif

// sync.elastic: rank 2 of 3 killed with SIGKILL mid-epoch. The coordinator (in rank 0) declares it
// dead and publishes a new world; ranks 0 and 1 end the collective they were in, form a world of 2
// over Gloo, take the state of the most advanced of them, re-plan the rest of the epoch and go on:
// no process restarts. Then a new process registers as rank 2: it joins the running world (3
// ranks again), takes the members' state by broadcast and trains the rest of the job with them.
// Every epoch counts every sample once (the dead rank's completed steps included), and the time
// from the kill to the re-formed world is printed (default liveness settings).
TEST(SyncElastic, RankKilledMidEpochTheOthersReformTheWorldInPlaceThenANewRankJoins) {
  TempDir dir;
  std::string coordinator = "tcp://127.0.0.1:" + std::to_string(free_port());
  auto rank_argv = [&](int r) {
    std::vector<std::string> argv{kShoal,
                                  "worker",
                                  kJob,
                                  "--sync.backend=gloo",
                                  "--model=mlp",
                                  "--train.epochs=5",
                                  "--data.train_limit=12000",
                                  "--data.test_limit=1000",
                                  "--threads=1",
                                  "--progress=off",
                                  "--cluster.workers=3",
                                  "--sync.elastic=true",
                                  "--node.rank=" + std::to_string(r),
                                  "--cluster.coordinator=" + coordinator};
    if (r == 0) argv.push_back("--metrics.file=" + dir.file("metrics.jsonl"));
    return argv;
  };
  std::vector<std::unique_ptr<Subprocess>> ranks;
  for (int r = 0; r < 3; ++r) ranks.push_back(std::make_unique<Subprocess>(rank_argv(r)));
  ASSERT_TRUE(wait_for_output(*ranks[2], std::regex("training epoch 2"), 3min)) << ranks[2]->output();
  std::this_thread::sleep_for(200ms);  // some steps into the epoch (the test holds at any point)
  auto killed = std::chrono::steady_clock::now();
  ranks[2]->signal(SIGKILL);
  ASSERT_TRUE(wait_for_output(*ranks[1], std::regex("the world is re-formed: rank 1 of 2 \\(was 1 of 3\\)"), 2min))
      << ranks[1]->output() << "\n---\n"
      << ranks[0]->output();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  std::printf("sync elastic: kill -9 of a rank to the world re-formed in place: %.2f s (default settings)\n", seconds);
  EXPECT_LT(seconds, 10 * kSlowdown);
  // A replacement for rank 2 joins the world of 2 while it trains.
  Subprocess joiner(rank_argv(2));
  ASSERT_TRUE(wait_for_output(joiner, std::regex("joined the running job: rank 2 of 3"), 2min))
      << joiner.output() << "\n---\n"
      << ranks[0]->output();
  ASSERT_EQ(ranks[0]->wait(3min), 0) << ranks[0]->output();
  ASSERT_EQ(ranks[1]->wait(1min), 0) << ranks[1]->output();
  ASSERT_EQ(joiner.wait(1min), 0) << joiner.output();
  const std::string out = ranks[0]->output();
  EXPECT_NE(out.find("the sync world re-forms in place without worker.2: 2 ranks"), std::string::npos) << out;
  EXPECT_NE(out.find("the world is re-formed: rank 0 of 2 (was 0 of 3)"), std::string::npos) << out;
  EXPECT_NE(out.find("the sync world re-forms in place with worker.2: 3 ranks"), std::string::npos) << out;
  EXPECT_NE(out.find("the world is re-formed: rank 0 of 3 (was 0 of 2)"), std::string::npos) << out;
  const std::string metrics = read_file(dir.file("metrics.jsonl"));
  auto epochs = testing::lines_with(metrics, "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 5u) << out;
  for (const auto& e : epochs) EXPECT_EQ(testing::json_number(e, "samples_done"), 12000) << e;
  EXPECT_GT(testing::json_number(epochs.back(), "test_accuracy"), 0.7) << epochs.back();
  EXPECT_EQ(testing::lines_with(metrics, "\"event\": \"world\"").size(), 2u) << metrics;
  EXPECT_EQ(testing::lines_with(metrics, "\"joined\": \"worker.2\"").size(), 1u) << metrics;
}

// sync.elastic under `shoal launch --local` with launch.restart_workers: rank 2 killed mid-epoch
// is restarted by the launcher; the new process registers with its rank, the coordinator takes
// the old one as dead at once, and the new one joins the world (3 ranks again) without the job
// stopping. A rank that tries to join a job that is not elastic is refused, naming the setting.
TEST(SyncElastic, RankRestartedByTheLauncherJoinsTheRunningWorld) {
  TempDir dir;
  Subprocess launch({kShoal, "launch", kJob, "--local", "--sync.backend=gloo", "--model=mlp", "--train.epochs=3",
                     "--data.train_limit=30000", "--data.test_limit=1000", "--threads=1", "--cluster.workers=3",
                     "--sync.elastic=true", "--launch.restart_workers=true",
                     "--metrics.file=" + dir.file("metrics.jsonl")});
  std::smatch m;
  ASSERT_TRUE(wait_for_output(launch, std::regex(R"(\[worker\.2 [^:\]]+:(\d+)\] training epoch 1)"), 2min, &m))
      << launch.output();
  const pid_t pid = static_cast<pid_t>(std::stol(m[1].str()));
  std::this_thread::sleep_for(300ms);
  const auto killed = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_TRUE(wait_for_output(launch, std::regex("joined the running job: rank 2 of 3"), 2min)) << launch.output();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  std::printf("sync elastic: kill -9 of a rank to its restarted process in the world again: %.2f s\n", seconds);
  EXPECT_LT(seconds, 10 * kSlowdown);
  ASSERT_EQ(launch.wait(3min), 0) << launch.output();
  const std::string out = launch.output();
  EXPECT_NE(out.find("worker.2 registered again from a new process"), std::string::npos) << out;
  const std::string metrics = read_file(dir.file("metrics.jsonl"));
  auto epochs = testing::lines_with(metrics, "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 3u) << out;
  for (const auto& e : epochs) EXPECT_EQ(testing::json_number(e, "samples_done"), 30000) << e;
  EXPECT_EQ(testing::lines_with(metrics, "\"joined\": \"worker.2\"").size(), 1u) << metrics;
}

// The same with the MPI backend, launched by `shoal launch --local` (through mpirun): Open MPI
// ends every rank once one dies and names it; the launcher, with no checkpoint to restart the
// world from, exits non-zero.
TEST(SyncFailure, MpiRankKilledMidEpochEndsTheLaunchNonZero) {
  std::vector<std::string> argv{kShoal, "launch"};
  auto job = small_job("mpi", 60000);
  argv.insert(argv.end(), job.begin(), job.end());
  argv.push_back("--local");
  Subprocess launch(argv);
  std::smatch m;
  ASSERT_TRUE(wait_for_output(launch, std::regex(R"(\[worker\.1 [^:\]]+:(\d+)\] training epoch 1)"), 2min, &m))
      << launch.output();
  pid_t pid = static_cast<pid_t>(std::stol(m[1].str()));
  std::this_thread::sleep_for(300ms);
  auto killed = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int code = launch.wait(60s);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  std::string out = launch.output();
  EXPECT_NE(code, 0) << out;
  EXPECT_NE(code, -1) << "the launch hung\n" << out;
  EXPECT_LT(seconds, 30) << out;
  EXPECT_TRUE(out.find("process rank 1") != std::string::npos ||
              out.find("lost worker.1 (rank 1)") != std::string::npos)
      << out;
  // Without checkpoint.dir the launcher has nothing to restart the world from, and says so
  // (SyncCheckpoint.LauncherRestartsTheSyncWorldFromTheLastCheckpointWhenARankDies: with one).
  EXPECT_NE(out.find("the sync world is not restarted (no checkpoint.dir to resume from)"), std::string::npos) << out;
}

// examples/fashion_mnist_sync.ini (2 ranks x 32, `cnn`, through mpirun, the default backend under
// `shoal launch`) for 2 epochs instead of its 10: 91.12 % here (2026-12, 26 s; the 10 epochs reach
// 91 % and more in 105 s). The bound is calibrated on the shorter run.
TEST(Accuracy, SyncCnnTwoRanksReaches90PercentIn2Epochs) {
  TempDir dir;
  auto r = testing::run(
      {kShoal, "launch", kJob, "--local", "--train.epochs=2", "--metrics.file=" + dir.file("m.jsonl")}, {}, 20min);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto end = testing::lines_with(read_file(dir.file("m.jsonl")), "\"event\": \"end\"");
  ASSERT_EQ(end.size(), 1u) << r.output;
  EXPECT_GE(testing::json_number(end[0], "final_test_accuracy"), 0.90) << r.output;
  EXPECT_LE(testing::lines_with(read_file(dir.file("m.jsonl")), "\"event\": \"epoch\"").size(), 2u);
}

// The multi-host path: `mpirun` across two hosts made of network namespaces with their own
// addresses (tests/multihost/two_hosts.sh: a plm_rsh_agent that enters a namespace stands in
// for ssh), the coordinator in rank 0 announced to the other host by MPI_Bcast, with each
// backend. Skips, saying why, where namespaces cannot be created.
TEST(MultiHost, SyncJobAcrossTwoNamespaceHostsWithEachBackend) {
  const std::string script = std::string(SHOAL_SOURCE_DIR) + "/tests/multihost/two_hosts.sh";
  for (const std::string backend : {"mpi", "gloo"}) {
    std::string command = "SHOAL_SYNC_INTERFACE=$TWO_HOSTS_IFACE exec " + kShoal + " worker " + kJob +
                          " --sync.backend=" + backend +
                          " --model=mlp --train.epochs=1 --data.train_limit=4096 --data.test_limit=1000"
                          " --threads=1 --progress=off";
    std::vector<std::string> argv{"/bin/bash", script};
    // Host 2 starts from a clean environment, as ssh gives: the sanitizer stage's settings go
    // along explicitly.
    for (const char* name : {"ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS", "TSAN_OPTIONS"})
      if (std::getenv(name) != nullptr) argv.insert(argv.end(), {"-x", name});
    argv.insert(argv.end(), {"--", "/bin/sh", "-c", command});
    auto r = testing::run(argv, {}, 4min);
    if (r.exit_code == 77) GTEST_SKIP() << "network namespaces unavailable: " << r.output;
    EXPECT_EQ(r.exit_code, 0) << backend << "\n" << r.output;
    EXPECT_NE(r.output.find("all-reduce over " + backend), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("final test accuracy"), std::string::npos) << r.output;
    // Two hosts: rank 1 reached the coordinator through host 1's veth address, not loopback.
    EXPECT_NE(r.output.find("listening on tcp://0.0.0.0:"), std::string::npos) << r.output;
  }
}

}  // namespace
}  // namespace shoal
