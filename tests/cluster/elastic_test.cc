// Checkpoints and elastic restarts with real `shoal` processes on loopback: a whole job killed
// with SIGKILL and started again (with another number of servers, past a corrupted newest
// checkpoint), a parameter server and a worker killed under `shoal launch --local`'s
// supervisor, and a job preempted with SIGTERM.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "checkpoint/checkpoint.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::free_port;
using testing::json_number;
using testing::lines_with;
using testing::read_file;
using testing::Subprocess;
using testing::TempDir;

const std::string kShoal = SHOAL_BINARY;

// Time targets hold for the plain build; under a sanitizer every process runs a few times
// slower, so there the bound is three times the target (the time is printed either way).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double kSlowdown = 3;
#else
constexpr double kSlowdown = 1;
#endif
const std::string kJob = std::string(SHOAL_SOURCE_DIR) + "/examples/fashion_mnist_async.ini";

std::size_t count_of(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// Waits until `needle` appears `times` times in the output of `p` (false: it exited first, or
// the deadline passed).
bool wait_for(Subprocess& p, const std::string& needle, std::chrono::milliseconds timeout, std::size_t times = 1) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (count_of(p.output(), needle) >= times) return true;
    if (!p.running()) return false;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

// The pid `shoal launch` reports for one of its processes ("started ps.1 (pid 1234)"), the
// newest one when it was restarted.
pid_t pid_of(const std::string& output, const std::string& name) {
  std::regex re("started " + std::regex_replace(name, std::regex("\\."), "\\.") + " \\(pid ([0-9]+)\\)");
  pid_t pid = -1;
  for (std::sregex_iterator it(output.begin(), output.end(), re), end; it != end; ++it)
    pid = static_cast<pid_t>(std::stol((*it)[1]));
  return pid;
}

// A small async job that takes a checkpoint every 20 global steps (about 5 per epoch).
std::vector<std::string> job(const TempDir& ckpt, const TempDir& dir) {
  return {"--model=mlp",
          "--train.epochs=3",
          "--data.train_limit=6000",
          "--data.test_limit=2000",
          "--data.shard_size=500",
          "--threads=1",
          "--progress=off",
          "--checkpoint.dir=" + ckpt.path(),
          "--checkpoint.every_steps=20",
          "--checkpoint.keep=2",
          "--metrics.file=" + dir.file("metrics.jsonl")};
}

// `shoal launch --local` of job(ckpt, dir), one argument replaced (`swap`: from, to) and `extra` added.
std::vector<std::string> launch_argv(const TempDir& ckpt, const TempDir& dir,
                                     const std::pair<std::string, std::string>& swap,
                                     const std::vector<std::string>& extra = {}) {
  std::vector<std::string> argv{kShoal, "launch", kJob, "--local"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  for (const auto& a : job(ckpt, dir)) argv.push_back(a == swap.first ? swap.second : a);
  return argv;
}

// Once both workers train: the pid of `name` as the launcher reported it (-1 if it did not).
pid_t pid_once_training(Subprocess& launch, const std::string& name) {
  if (!wait_for(launch, "training epoch 1", 120s, 2)) return -1;
  return pid_of(launch.output(), name);
}

struct Job {
  std::string coordinator = "tcp://127.0.0.1:" + std::to_string(free_port());
  std::vector<std::unique_ptr<Subprocess>> processes;  // coordinator first
  Job(std::vector<std::string> args, int servers, int workers) {
    args.insert(args.begin(), kJob);
    args.push_back("--cluster.coordinator=" + coordinator);
    args.push_back("--cluster.servers=" + std::to_string(servers));
    args.push_back("--cluster.workers=" + std::to_string(workers));
    auto start = [&](const std::string& role, const std::string& rank) {
      std::vector<std::string> argv{kShoal, role};
      argv.insert(argv.end(), args.begin(), args.end());
      if (!rank.empty()) argv.push_back("--node.rank=" + rank);
      processes.push_back(std::make_unique<Subprocess>(argv));
    };
    start("coordinator", "");
    for (int i = 0; i < servers; ++i) start("ps", std::to_string(i));
    for (int i = 0; i < workers; ++i) start("worker", std::to_string(i));
  }
  Subprocess& coordinator_process() { return *processes.front(); }
  std::string output() const {
    std::string out;
    for (const auto& p : processes) out += "---\n" + p->output();
    return out;
  }
};

TEST(Checkpoint, WholeJobKilledResumesFromTheNewestIntactCheckpointWithThreeServers) {
  TempDir ckpt, first, second;
  std::string newest;
  {
    Job a(job(ckpt, first), 2, 2);
    // Two complete checkpoints, then every process dies at once.
    ASSERT_TRUE(wait_for(a.coordinator_process(), " written: ", 120s, 2)) << a.output();
    for (auto& p : a.processes) p->signal(SIGKILL);
    for (auto& p : a.processes) p->wait(10s);
    newest = read_file(ckpt.file("LATEST"));
    while (!newest.empty() && std::isspace(static_cast<unsigned char>(newest.back()))) newest.pop_back();
    ASSERT_EQ(newest.rfind("ckpt-", 0), 0u) << newest;
  }
  auto verify = testing::run({kShoal, "checkpoint", "verify", ckpt.path()});
  ASSERT_EQ(verify.exit_code, 0) << verify.output;

  // One flipped bit in the newest checkpoint's parameters: the resume passes over it.
  std::string params;
  for (const auto& e : std::filesystem::directory_iterator(ckpt.file(newest)))
    if (e.path().filename().string().rfind("params.", 0) == 0) params = e.path().string();
  ASSERT_FALSE(params.empty());
  {
    std::fstream f(params, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-5, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(-5, std::ios::end);
    f.write(&c, 1);
  }
  Job b(job(ckpt, second), 3, 2);
  ASSERT_EQ(b.coordinator_process().wait(180s), 0) << b.output();
  const std::string coord = b.coordinator_process().output();
  EXPECT_NE(coord.find("not resuming from " + ckpt.file(newest)), std::string::npos) << coord;
  EXPECT_NE(coord.find(std::filesystem::path(params).filename().string()), std::string::npos)
      << "the message names the corrupted file\n"
      << coord;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(coord, m, std::regex("resuming from [^ ]*/(ckpt-[0-9]+) \\(step"))) << coord;
  EXPECT_NE(m[1].str(), newest) << "the previous checkpoint is used";
  for (std::size_t s = 1; s < b.processes.size() && s <= 3; ++s)
    EXPECT_NE(b.processes[s]->output().find("restored"), std::string::npos) << b.processes[s]->output();
  // Every epoch reported after the resume has each sample exactly once: shards done before the
  // checkpoint are not trained again, the others are trained once.
  auto epochs = lines_with(read_file(second.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_FALSE(epochs.empty()) << coord;
  EXPECT_EQ(json_number(epochs.back(), "epoch"), 3) << epochs.back();
  for (const auto& e : epochs) {
    EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
    EXPECT_EQ(json_number(e, "samples_processed"), 6000) << e;
  }
  EXPECT_GT(json_number(epochs.back(), "test_accuracy"), 0.70) << epochs.back();
}

TEST(Checkpoint, ANamedCheckpointThatIsMissingOrCorruptStopsTheJobNamingTheFile) {
  TempDir root, dir;
  auto missing = testing::run({kShoal, "coordinator", kJob, "--checkpoint.resume=" + root.file("ckpt-40")}, {}, 60s);
  EXPECT_EQ(missing.exit_code, 5) << missing.output;
  EXPECT_NE(missing.output.find(root.file("ckpt-40") + "/MANIFEST"), std::string::npos) << missing.output;
  // A complete checkpoint with one byte changed.
  {
    Job a(job(root, dir), 2, 2);
    ASSERT_TRUE(wait_for(a.coordinator_process(), " written: ", 120s)) << a.output();
    for (auto& p : a.processes) p->signal(SIGKILL);
    for (auto& p : a.processes) p->wait(10s);
  }
  std::string latest = read_file(root.file("LATEST"));
  latest.erase(latest.find_last_not_of(" \n") + 1);
  {
    std::fstream f(root.file(latest + "/position"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0);
    f.write("X", 1);
  }
  auto corrupt = testing::run({kShoal, "coordinator", kJob, "--checkpoint.resume=" + root.file(latest)}, {}, 60s);
  EXPECT_EQ(corrupt.exit_code, 5) << corrupt.output;
  EXPECT_NE(corrupt.output.find(root.file(latest) + "/position"), std::string::npos) << corrupt.output;
}

// The parameters of the newest checkpoint under `root`.
std::vector<float> newest_values(const std::string& root, std::string* name) {
  std::string latest = read_file(root + "/LATEST");
  latest.erase(latest.find_last_not_of(" \n") + 1);
  *name = latest;
  const std::string dir = root + "/" + latest;
  auto ranges = list_ranges(dir, read_manifest(dir));
  const std::int64_t n = ranges.back().end;
  std::vector<float> values(static_cast<std::size_t>(n));
  read_range(dir, ranges, "values", 0, n, values.data());
  return values;
}

// A small sync job (mlp, Gloo unless `extra` says otherwise) under `shoal launch --local`,
// checkpointing into `dir`; `extra` adds (or, given later, overrides) settings.
std::vector<std::string> sync_launch(const TempDir& dir, const std::vector<std::string>& extra) {
  std::vector<std::string> argv{kShoal,
                                "launch",
                                std::string(SHOAL_SOURCE_DIR) + "/examples/fashion_mnist_sync.ini",
                                "--local",
                                "--model=mlp",
                                "--data.test_limit=500",
                                "--threads=1",
                                "--checkpoint.dir=" + dir.path()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return argv;
}

// The newest checkpoint under `root` is `expected_name` and holds exactly `expected`.
void expect_final_parameters(const std::string& root, const std::string& expected_name,
                             const std::vector<float>& expected, const char* what) {
  std::string name;
  const std::vector<float> values = newest_values(root, &name);
  EXPECT_EQ(name, expected_name) << what;
  ASSERT_EQ(values.size(), expected.size()) << what;
  EXPECT_EQ(std::memcmp(expected.data(), values.data(), expected.size() * sizeof(float)), 0)
      << what << ": the parameters differ from the uninterrupted job's";
}

// Sync jobs (Gloo) checkpoint at epoch boundaries, rank 0 writing the state every rank holds, and
// the trained model at the end. Killed with SIGKILL after the first checkpoint and started again,
// the job resumes from LATEST and ends with parameters bit for bit those of an uninterrupted run:
// every rank's data order and dropout are functions of the seed, the epoch and the step, which
// the checkpoint holds. The same checkpoint then resumes with 3 ranks instead of 2.
TEST(SyncCheckpoint, KilledAndStartedAgainEndsBitForBitAsAnUninterruptedRunThenGoesOnWithThreeRanks) {
  auto job = [&](const TempDir& dir, int ranks, int epochs) {
    return sync_launch(
        dir, {"--sync.backend=gloo", "--cluster.workers=" + std::to_string(ranks),
              "--train.epochs=" + std::to_string(epochs), "--data.train_limit=3000", "--checkpoint.every_steps=20"});
  };
  TempDir whole, killed, dir;
  auto uninterrupted = testing::run(job(whole, 2, 3), {}, 300s);
  ASSERT_EQ(uninterrupted.exit_code, 0) << uninterrupted.output;
  {
    Subprocess first(job(killed, 2, 3));
    ASSERT_TRUE(wait_for(first, " written: ", 120s)) << first.output();
    for (const char* rank : {"worker.0", "worker.1"}) kill(pid_of(first.output(), rank), SIGKILL);
    first.signal(SIGKILL);
    first.wait(10s);
  }
  auto again = testing::run(job(killed, 2, 3), {}, 300s);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resuming from"), std::string::npos) << again.output;
  std::string a, b;
  const std::vector<float> expected = newest_values(whole.path(), &a), resumed = newest_values(killed.path(), &b);
  EXPECT_EQ(a, b) << "both end with a checkpoint of the trained model at the same step";
  ASSERT_EQ(expected.size(), resumed.size());
  EXPECT_EQ(std::memcmp(expected.data(), resumed.data(), expected.size() * sizeof(float)), 0)
      << "the resumed job's parameters differ from the uninterrupted job's";

  auto three = job(killed, 3, 4);
  three.push_back("--metrics.file=" + dir.file("metrics.jsonl"));
  auto wider = testing::run(three, {}, 300s);
  ASSERT_EQ(wider.exit_code, 0) << wider.output;
  EXPECT_NE(wider.output.find("resuming from " + killed.file(b)), std::string::npos) << wider.output;
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 1u) << wider.output;
  EXPECT_EQ(json_number(epochs[0], "epoch"), 4) << epochs[0];
  EXPECT_EQ(json_number(epochs[0], "samples_done"), 3000) << epochs[0];
}

// Sync preemption: SIGTERM to one rank mid-epoch. Every rank votes its stop flag in each step,
// so the world agrees on a step; rank 0 has that step checkpointed (mid-epoch: the trainer file
// records the epoch and the samples of it trained) and every process exits 0 within 10 s. The
// job started again resumes there and ends bit for bit as an uninterrupted run, with every sample
// of the cut epoch counted once.
TEST(SyncCheckpoint, SigtermToARankStopsTheWorldAtOneCheckpointedStepAndItResumesThereBitForBit) {
  auto job = [&](const TempDir& dir) {
    return sync_launch(dir, {"--sync.backend=gloo", "--train.epochs=2", "--data.train_limit=6000",
                             "--checkpoint.every_steps=30", "--metrics.file=" + dir.file("metrics.jsonl")});
  };
  TempDir whole, stopped;
  auto uninterrupted = testing::run(job(whole), {}, 300s);
  ASSERT_EQ(uninterrupted.exit_code, 0) << uninterrupted.output;
  std::string expected_name;
  const std::vector<float> expected = newest_values(whole.path(), &expected_name);
  {
    Subprocess first(job(stopped));
    // The first cut of every_steps (step 30 of 94 in epoch 1): training is under way.
    ASSERT_TRUE(wait_for(first, "cut in epoch 1", 120s)) << first.output();
    const auto sent = std::chrono::steady_clock::now();
    kill(pid_of(first.output(), "worker.1"), SIGTERM);
    EXPECT_EQ(first.wait(30s), 0) << first.output();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
    std::printf("SIGTERM to rank 1 -> every process exited with the checkpoint durable in %.2f s\n", seconds);
    EXPECT_LT(seconds, 10 * kSlowdown) << first.output();
    EXPECT_NE(first.output().find("the world agreed to stop after step"), std::string::npos) << first.output();
    EXPECT_EQ(first.output().find("lost worker"), std::string::npos) << first.output();
  }
  std::string latest = read_file(stopped.file("LATEST"));
  latest.erase(latest.find_last_not_of(" \n") + 1);
  const std::string trainer = read_file(stopped.file(latest + "/trainer"));
  EXPECT_NE(trainer.find("within_epoch "), std::string::npos) << latest << ": " << trainer;
  EXPECT_NE(latest, expected_name) << "the stop came before the job's end";
  auto again = testing::run(job(stopped), {}, 300s);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resuming from " + stopped.file(latest)), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("samples in: it goes on from there"), std::string::npos) << again.output;
  expect_final_parameters(stopped.path(), expected_name, expected, "the job resumed mid-epoch");
  // Every epoch counts every sample once, the cut one included (its first part from the cut).
  auto epochs = lines_with(read_file(stopped.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_FALSE(epochs.empty());
  for (const auto& e : epochs) EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
}

// `shoal launch --local` restarts a sync world whose rank died, as a whole, from the last
// checkpoint (launch.max_restarts times at most): with mpi (Open MPI cannot shrink a world),
// with gloo when the job is not elastic, and with sync.elastic when the lost rank is rank 0 (it
// runs the coordinator). The restarted world resumes from the last epoch-boundary checkpoint, so
// the job ends with parameters bit for bit those of an uninterrupted run (2 ranks: an all-reduce
// of two terms is the same sum in any order and with any backend).
TEST(SyncCheckpoint, LauncherRestartsTheSyncWorldFromTheLastCheckpointWhenARankDies) {
  auto job = [&](const TempDir& dir, const std::string& backend, bool elastic) {
    return sync_launch(dir, {"--sync.backend=" + backend, "--sync.elastic=" + std::string(elastic ? "true" : "false"),
                             "--train.epochs=3", "--data.train_limit=15000", "--checkpoint.every_steps=20",
                             "--metrics.file=" + dir.file("metrics.jsonl")});
  };
  TempDir whole;
  auto uninterrupted = testing::run(job(whole, "gloo", false), {}, 300s);
  ASSERT_EQ(uninterrupted.exit_code, 0) << uninterrupted.output;
  std::string expected_name;
  const std::vector<float> expected = newest_values(whole.path(), &expected_name);

  struct Case {
    std::string backend;
    bool elastic;
    std::string victim;
  };
  const std::vector<Case> cases{{"gloo", false, "worker.1"}, {"gloo", true, "worker.0"}, {"mpi", false, "worker.1"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.backend + (c.elastic ? ", elastic" : "") + ", kill -9 of " + c.victim);
    TempDir dir;
    Subprocess launch(job(dir, c.backend, c.elastic));
    // After the first checkpoint (epoch 1's end), some steps into epoch 2: the rank's pid is in
    // its log lines' prefix ("[worker.1 host:pid]"; mpirun starts the ranks, not the launcher).
    ASSERT_TRUE(wait_for(launch, " written: ", 120s)) << launch.output();
    ASSERT_TRUE(wait_for(launch, "training epoch 2", 60s, 2)) << launch.output();
    std::this_thread::sleep_for(200ms);
    std::smatch m;
    const std::string out = launch.output();
    ASSERT_TRUE(std::regex_search(
        out, m, std::regex("\\[" + std::regex_replace(c.victim, std::regex("\\."), "\\.") + " [^:\\]]+:([0-9]+)\\]")))
        << out;
    ASSERT_EQ(kill(static_cast<pid_t>(std::stol(m[1])), SIGKILL), 0);
    ASSERT_EQ(launch.wait(300s), 0) << launch.output();
    const std::string all = launch.output();
    EXPECT_NE(all.find("stopping the sync world to restart it from the last checkpoint (1 of 3"), std::string::npos)
        << all;
    EXPECT_NE(all.find("restarting the sync world (1 of 3), resuming from ckpt-"), std::string::npos) << all;
    EXPECT_NE(all.find("resuming from " + dir.path() + "/ckpt-"), std::string::npos) << all;
    expect_final_parameters(dir.path(), expected_name, expected, "the restarted world");
    // Every epoch was completed once with every sample (the interrupted epoch 2 only in the
    // restarted world).
    auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
    ASSERT_EQ(epochs.size(), 3u) << all;
    for (std::size_t e = 0; e < epochs.size(); ++e) {
      EXPECT_EQ(json_number(epochs[e], "epoch"), static_cast<double>(e + 1)) << epochs[e];
      EXPECT_EQ(json_number(epochs[e], "samples_done"), 15000) << epochs[e];
    }
  }
}

TEST(Elastic, ParameterServerKilledIsRestartedRestoredAndTheJobFinishes) {
  TempDir ckpt, dir;
  Subprocess launch(launch_argv(ckpt, dir, {}));
  ASSERT_TRUE(wait_for(launch, " written: ", 120s)) << launch.output();
  pid_t ps1 = pid_of(launch.output(), "ps.1");
  ASSERT_GT(ps1, 0) << launch.output();
  ASSERT_EQ(kill(ps1, SIGKILL), 0);
  ASSERT_EQ(launch.wait(240s), 0) << launch.output();
  const std::string out = launch.output();
  EXPECT_NE(out.find("ps.1 exited with code 137; restarting it"), std::string::npos) << out;
  EXPECT_NE(out.find("ps.1 is back at"), std::string::npos) << out;
  EXPECT_NE(out.find("restored"), std::string::npos) << out;
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 3u) << out;
  for (const auto& e : epochs) EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
  EXPECT_GT(json_number(epochs.back(), "test_accuracy"), 0.70) << epochs.back();
}

TEST(Elastic, WorkerKilledIsRestartedRejoinsAndTheJobGoesOnWithinFiveSeconds) {
  TempDir ckpt, dir;
  Subprocess launch(launch_argv(ckpt, dir, {}, {"--launch.restart_workers=true"}));
  const pid_t w1 = pid_once_training(launch, "worker.1");
  ASSERT_GT(w1, 0) << launch.output();
  ASSERT_EQ(kill(w1, SIGKILL), 0);
  ASSERT_EQ(launch.wait(240s), 0) << launch.output();
  const std::string out = launch.output();
  EXPECT_NE(out.find("worker.1 exited with code 137; restarting it"), std::string::npos) << out;
  EXPECT_EQ(count_of(out, "registered worker.1"), 2u) << "it joined the running job again\n" << out;
  // The coordinator measures it: from the lost worker's last sign of life to the next shard
  // the job completes.
  auto recovery = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"recovery\"");
  ASSERT_EQ(recovery.size(), 1u) << out;
  const double seconds = json_number(recovery[0], "seconds");
  std::printf("recovery time from kill -9 of a worker to the next completed shard: %.2f s (default settings)\n",
              seconds);
  EXPECT_LT(seconds, 5.0 * kSlowdown) << recovery[0];
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 3u) << out;
  for (const auto& e : epochs) EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
}

// kill -9 of the coordinator of an async job with checkpoints, at three moments: while it
// trains, once a checkpoint begins (its drain, or the servers writing it) and once a worker
// evaluates (a larger test set, so the kill lands inside). The launcher starts it again at once;
// the servers and workers worked on, register again, and it takes the job over from the live
// position beside the checkpoints. Every epoch trains every sample once.
TEST(Elastic, CoordinatorKilledIsRestartedTakesTheJobOverAndEveryShardIsTrainedOnce) {
  struct Moment {
    std::string name, needle;
    std::pair<std::string, std::string> swap;
  };
  const std::vector<Moment> moments{
      {"training", "training epoch 2", {}},
      {"a checkpoint", "draining (no new shard", {}},
      {"an evaluation", "evaluating the model after epoch 1", {"--data.test_limit=2000", "--data.test_limit=10000"}}};
  for (const Moment& moment : moments) {
    SCOPED_TRACE("kill -9 of the coordinator during " + moment.name);
    TempDir ckpt, dir;
    Subprocess launch(launch_argv(ckpt, dir, moment.swap));
    ASSERT_TRUE(wait_for(launch, moment.needle, 120s)) << launch.output();
    const pid_t coordinator = pid_of(launch.output(), "coordinator");
    ASSERT_GT(coordinator, 0) << launch.output();
    ASSERT_EQ(kill(coordinator, SIGKILL), 0);
    ASSERT_EQ(launch.wait(240s), 0) << launch.output();
    const std::string out = launch.output();
    EXPECT_NE(out.find("coordinator exited with code 137; restarting it"), std::string::npos) << out;
    EXPECT_NE(out.find("took the job over"), std::string::npos) << out;
    EXPECT_EQ(count_of(out, "registered again with the restarted coordinator"), 4u) << out;
    for (const char* member : {"ps.0", "ps.1", "worker.0", "worker.1"})
      EXPECT_EQ(count_of(out, std::string(member) + " exited with code"), 0u) << member << " worked on\n" << out;
    // The new coordinator measures it: from its start to the first shard completed under it.
    auto recovery = lines_with(read_file(dir.file("metrics.jsonl")), "\"lost\": \"coordinator\"");
    ASSERT_EQ(recovery.size(), 1u) << out;
    const double seconds = json_number(recovery[0], "seconds");
    std::printf("kill -9 of the coordinator during %s: from its restart to the first completed shard %.2f s\n",
                moment.name.c_str(), seconds);
    EXPECT_LT(seconds, 5.0 * kSlowdown) << recovery[0];
    auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
    ASSERT_EQ(epochs.size(), 3u) << out;
    for (const auto& e : epochs) {
      EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
      EXPECT_EQ(json_number(e, "samples_processed"), 6000) << "every shard trained once: " << e;
    }
  }
}

TEST(Elastic, StoppedWorkerIsDeclaredDeadItsWorkReissuedAndAfterSigcontItRejoins) {
  TempDir ckpt, dir;
  Subprocess launch(launch_argv(ckpt, dir, {"--train.epochs=3", "--train.epochs=8"},  // time to rejoin
                                {"--launch.restart_workers=true"}));
  const pid_t w1 = pid_once_training(launch, "worker.1");
  ASSERT_GT(w1, 0) << launch.output();
  ASSERT_EQ(kill(w1, SIGSTOP), 0);
  ASSERT_TRUE(wait_for(launch, "worker.1 declared dead", 30s)) << launch.output();
  ASSERT_EQ(kill(w1, SIGCONT), 0);
  // It learns it was dropped, exits 6, and its supervisor starts it again: it rejoins.
  ASSERT_TRUE(wait_for(launch, "registered worker.1", 60s, 2)) << launch.output();
  ASSERT_EQ(launch.wait(240s), 0) << launch.output();
  const std::string out = launch.output();
  EXPECT_NE(out.find("worker.1 exited with code 6; restarting it"), std::string::npos) << out;
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 8u) << out;  // (--train.epochs=8)
  for (const auto& e : epochs) EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
}

// SIGTERM to one parameter server (its VM or pod is preempted): the coordinator cuts a checkpoint,
// the job pauses at that cut, the server writes its part, leaves and exits 0; its supervisor starts
// it again and it restores from exactly that checkpoint, so no update is lost. The job finishes with
// every sample of every epoch.
TEST(Elastic, SigtermToAParameterServerCheckpointsItsShardAndItsReplacementRestoresIt) {
  TempDir ckpt, dir;
  Subprocess launch(
      launch_argv(ckpt, dir, {"--checkpoint.every_steps=20", "--checkpoint.every_steps=100000"}));  // only the one
  const pid_t ps1 = pid_once_training(launch, "ps.1");
  ASSERT_GT(ps1, 0) << launch.output();
  ASSERT_EQ(kill(ps1, SIGTERM), 0);
  ASSERT_EQ(launch.wait(240s), 0) << launch.output();
  const std::string out = launch.output();
  std::smatch cut;
  ASSERT_TRUE(std::regex_search(out, cut,
                                std::regex("ps\\.1 is preempted \\(SIGTERM\\): the job pauses at the cut of "
                                           "checkpoint (ckpt-[0-9]+)")))
      << out;
  EXPECT_NE(out.find("preempted (SIGTERM), left the job: its state is in"), std::string::npos) << out;
  EXPECT_NE(out.find("ps.1 exited with code 0; restarting it"), std::string::npos) << out;
  // Restored from the checkpoint cut for it: nothing applied after the cut, nothing lost.
  EXPECT_NE(out.find("it restores from " + ckpt.file(cut[1].str())), std::string::npos) << out;
  std::smatch back;
  if (std::regex_search(out, back, std::regex("ps\\.1 is back at \\S+ after ([0-9]+) ms")))
    std::printf("preempted parameter server: the job paused %s ms (cut to its replacement's registration)\n",
                back[1].str().c_str());
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 3u) << out;
  for (const auto& e : epochs) EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
  EXPECT_GT(json_number(epochs.back(), "test_accuracy"), 0.70) << epochs.back();
}

TEST(Elastic, SigtermToTheLauncherCheckpointsStopsWithinTenSecondsAndTheJobResumes) {
  TempDir ckpt, dir;
  std::vector<std::string> argv{kShoal,
                                "launch",
                                kJob,
                                "--local",
                                "--model=cnn",
                                "--optimizer.lr=0.01",  // a smaller step than the example's: stable from any start
                                "--train.epochs=2",
                                "--data.train_limit=8000",
                                "--data.test_limit=1000",
                                "--checkpoint.dir=" + ckpt.path(),
                                "--checkpoint.on_term_older_than=0"};
  Subprocess launch(argv);
  ASSERT_TRUE(wait_for(launch, "training epoch 1", 120s, 2)) << launch.output();
  std::this_thread::sleep_for(500ms);  // some steps into the epoch (the test holds either way)
  launch.signal(SIGTERM);
  const auto sent = std::chrono::steady_clock::now();
  ASSERT_EQ(launch.wait(30s), 0) << launch.output();
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
  std::printf("SIGTERM to exit 0 with a last checkpoint (cnn): %.2f s\n", took);
  EXPECT_LT(took, 10.0 * kSlowdown) << launch.output();
  EXPECT_NE(launch.output().find("after checkpoint ckpt-"), std::string::npos) << launch.output();
  ASSERT_TRUE(std::filesystem::exists(ckpt.file("LATEST")));

  argv.push_back("--metrics.file=" + dir.file("metrics.jsonl"));
  Subprocess again(argv);
  ASSERT_EQ(again.wait(240s), 0) << again.output();
  EXPECT_NE(again.output().find("resuming from"), std::string::npos) << again.output();
  auto epochs = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\"");
  ASSERT_FALSE(epochs.empty()) << again.output();
  EXPECT_EQ(json_number(epochs.back(), "epoch"), 2) << epochs.back();
  for (const auto& e : epochs) EXPECT_EQ(json_number(e, "samples_done"), 8000) << e;
  EXPECT_GT(json_number(epochs.back(), "test_accuracy"), 0.6) << epochs.back();
}

// Network namespaces for a "cut the cable" test: a hub namespace for the coordinator, the servers
// and worker.0, its address on the hub's loopback (so it stays up whatever happens to a link),
// and one namespace for worker.1 reaching the hub over a veth pair. Removed on destruction.
// Needs root and iproute2; `error` says why when they cannot be made.
class Namespaces {
 public:
  Namespaces() {
    for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
      if (access(path, X_OK) == 0) ip_ = path;
    if (ip_.empty()) {
      error_ = "no `ip` command (Debian package iproute2)";
      return;
    }
    const std::string tag = std::to_string(getpid());
    hub_ = "shoal-hub-" + tag;
    leaf_ = "shoal-w1-" + tag;
    const std::string veth_hub = "shh" + tag, veth_leaf = "shw" + tag;
    const std::vector<std::vector<std::string>> steps = {
        {ip_, "netns", "add", hub_},
        {ip_, "netns", "add", leaf_},
        {ip_, "-n", hub_, "link", "set", "lo", "up"},
        {ip_, "-n", leaf_, "link", "set", "lo", "up"},
        {ip_, "-n", hub_, "addr", "add", kHubAddress + "/32", "dev", "lo"},
        {ip_, "-n", hub_, "link", "add", veth_hub, "type", "veth", "peer", "name", veth_leaf, "netns", leaf_},
        {ip_, "-n", hub_, "addr", "add", "10.231.0.1/24", "dev", veth_hub},
        {ip_, "-n", leaf_, "addr", "add", "10.231.0.2/24", "dev", veth_leaf},
        {ip_, "-n", hub_, "link", "set", veth_hub, "up"},
        {ip_, "-n", leaf_, "link", "set", veth_leaf, "up"},
        {ip_, "-n", leaf_, "route", "add", kHubAddress + "/32", "via", "10.231.0.1"},
        // A process can run in them (a chroot without /sys mounted fails here).
        {ip_, "netns", "exec", leaf_, ip_, "link", "show", veth_leaf},
    };
    leaf_link_ = veth_leaf;
    for (const auto& step : steps) {
      auto r = testing::run(step, {}, 20s);
      if (r.exit_code != 0) {
        error_ = "`";
        for (const auto& a : step) error_ += a + " ";
        error_ += "` failed (" + std::to_string(r.exit_code) + "): " + r.output;
        return;
      }
    }
  }
  ~Namespaces() {
    if (ip_.empty()) return;
    testing::run({ip_, "netns", "del", leaf_}, {}, 20s);  // takes the veth pair with it
    testing::run({ip_, "netns", "del", hub_}, {}, 20s);
  }
  const std::string& error() const { return error_; }
  // argv run inside the hub's or the worker's namespace.
  std::vector<std::string> in_hub(std::vector<std::string> argv) const { return in(hub_, std::move(argv)); }
  std::vector<std::string> in_leaf(std::vector<std::string> argv) const { return in(leaf_, std::move(argv)); }
  // Takes worker.1's end of the cable down or up (inside its namespace).
  // Down drops the namespace's route to the hub; up puts it back.
  int set_link(bool up) const {
    int rc = testing::run({ip_, "-n", leaf_, "link", "set", leaf_link_, up ? "up" : "down"}, {}, 20s).exit_code;
    if (rc != 0 || !up) return rc;
    return testing::run({ip_, "-n", leaf_, "route", "replace", kHubAddress + "/32", "via", "10.231.0.1"}, {}, 20s)
        .exit_code;
  }
  static inline const std::string kHubAddress = "10.231.1.1";

 private:
  std::vector<std::string> in(const std::string& ns, std::vector<std::string> argv) const {
    argv.insert(argv.begin(), {ip_, "netns", "exec", ns});
    return argv;
  }
  std::string ip_, hub_, leaf_, leaf_link_, error_;
};

// A worker cut off for 10 s by taking its namespace's link down (the cable is pulled: no process
// dies, no socket is closed) is evicted within the liveness period and its shard re-leased; it
// stops on its side too (no coordinator for as long), its supervisor starts it again, and once the
// link is back it is re-admitted. Two epochs after that the coordinator gets SIGTERM (the job is
// preempted), and every process exits 0 with every sample of every epoch trained.
TEST(Elastic, WorkerCutOffByItsNetworkLinkIsEvictedThenReadmitted) {
  if (geteuid() != 0) GTEST_SKIP() << "network-namespace test skipped: it needs root (to make namespaces)";
  Namespaces ns;
  if (!ns.error().empty())
    GTEST_SKIP() << "network-namespace test skipped: cannot make namespaces here: " << ns.error();
  TempDir ckpt, dir;
  std::vector<std::string> args{kJob, "--cluster.coordinator=tcp://" + Namespaces::kHubAddress + ":7001",
                                "--node.address=tcp://" + Namespaces::kHubAddress + ":0"};
  // The job runs until the test ends it, however fast this machine trains: it is still running
  // when the worker comes back.
  for (const auto& a : job(ckpt, dir)) args.push_back(a == "--train.epochs=3" ? "--train.epochs=100000" : a);
  auto command = [&](const std::string& role, int rank) {
    std::vector<std::string> argv{kShoal, role};
    argv.insert(argv.end(), args.begin(), args.end());
    if (rank >= 0) argv.push_back("--node.rank=" + std::to_string(rank));
    return argv;
  };
  Subprocess coordinator(ns.in_hub(command("coordinator", -1)));
  Subprocess ps0(ns.in_hub(command("ps", 0))), ps1(ns.in_hub(command("ps", 1)));
  Subprocess w0(ns.in_hub(command("worker", 0)));
  auto w1 = std::make_unique<Subprocess>(ns.in_leaf(command("worker", 1)));
  std::string cut_off;  // the output of worker.1's first process
  auto everyone = [&] {
    return "--- coordinator\n" + coordinator.output() + "--- worker.1 (cut off)\n" + cut_off + "--- worker.1\n" +
           w1->output() + "--- worker.0\n" + w0.output() + "--- ps.0\n" + ps0.output() + "--- ps.1\n" + ps1.output();
  };
  ASSERT_TRUE(wait_for(*w1, "training epoch 1", 120s)) << everyone();
  ASSERT_EQ(ns.set_link(false), 0);
  const auto cut = std::chrono::steady_clock::now();
  ASSERT_TRUE(wait_for(coordinator, "worker.1 declared dead", 30s)) << everyone();
  const double evicted = std::chrono::duration<double>(std::chrono::steady_clock::now() - cut).count();
  std::printf("worker cut off by its link: evicted after %.2f s\n", evicted);
  EXPECT_LT(evicted, 10.0 * kSlowdown) << "evicted while the link was still down";
  // Its side sees the same silence: it stops, saying why, and its supervisor (this test, as
  // Kubernetes would) starts it again at once; it waits for the coordinator while the link is down.
  EXPECT_EQ(w1->wait(60s), 6) << everyone();
  cut_off = w1->output();
  EXPECT_NE(cut_off.find("lost the coordinator"), std::string::npos) << cut_off;
  w1 = std::make_unique<Subprocess>(ns.in_leaf(command("worker", 1)));
  ASSERT_TRUE(wait_for(*w1, "waiting for the coordinator", 60s)) << everyone();
  std::this_thread::sleep_until(cut + 10s);  // the fault lasts 10 s (what the test injects)
  EXPECT_EQ(count_of(coordinator.output(), "registered worker.1"), 1u) << "nothing crosses a link that is down";
  ASSERT_EQ(ns.set_link(true), 0);
  ASSERT_TRUE(wait_for(coordinator, "registered worker.1", 60s, 2)) << everyone();
  // Two whole epochs with the worker back in, then the job is preempted.
  auto epoch_reports = [&] { return lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"epoch\""); };
  const std::size_t back_at = epoch_reports().size();
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (epoch_reports().size() < back_at + 2 && coordinator.running() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(20ms);
  ASSERT_GE(epoch_reports().size(), back_at + 2) << everyone();
  EXPECT_NE(w1->output().find("training epoch"), std::string::npos) << "the re-admitted worker trains\n" << everyone();
  coordinator.signal(SIGTERM);
  ASSERT_EQ(coordinator.wait(60s), 0) << everyone();
  EXPECT_EQ(w1->wait(60s), 0) << everyone();
  EXPECT_EQ(w0.wait(60s), 0) << everyone();
  EXPECT_EQ(ps0.wait(60s), 0) << everyone();
  EXPECT_EQ(ps1.wait(60s), 0) << everyone();
  auto reports = epoch_reports();
  ASSERT_GE(reports.size(), back_at + 2) << everyone();
  for (const auto& e : reports) EXPECT_EQ(json_number(e, "samples_done"), 6000) << e;
  // The rest of the job went on without it while it was cut off.
  auto recovery = lines_with(read_file(dir.file("metrics.jsonl")), "\"event\": \"recovery\"");
  ASSERT_FALSE(recovery.empty()) << everyone();
  EXPECT_LT(json_number(recovery[0], "seconds"), 10.0 * kSlowdown) << recovery[0];
}

}  // namespace
}  // namespace shoal
