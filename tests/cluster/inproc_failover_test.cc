// Coordinator failover inside this process (tests/support/inproc_cluster.h): the coordinator
// vanishes as kill -9 would stop it, at three moments of an async job (training, a checkpoint's
// drain, an evaluation), and a new one is started at once on the same address, as `shoal
// launch --local` or Kubernetes restarts it. Servers and workers work on, register again, and
// the job ends with every sample of every epoch trained exactly once. Faults are injected on the
// way: registrations delivered twice, heartbeats and reports late. Built once more under
// ThreadSanitizer and AddressSanitizer.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "tests/support/inproc_cluster.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::InprocCluster;
using testing::small_job;
using K = wire::Envelope::Body;

constexpr auto kJobTime = 120s;

// Four epochs of 6 shards, a checkpoint every 8 global steps (two shards).
JobConfig failover_job(const std::string& checkpoints) {
  JobConfig job = small_job();
  job.epochs = 4;
  job.checkpoint_dir = checkpoints;
  job.checkpoint_every_steps = 8;
  return job;
}

// The faults every case adds: each registration twice (a member registering again is still
// one member), some heartbeats and shard reports late.
void add_noise(FaultPlan& faults) {
  faults.add({K::REGISTER, FaultAction::duplicate, "", -1});
  faults.add({K::LEASE_DONE, FaultAction::delay, "worker.1", 5, 30ms});
  faults.add({K::HEARTBEAT, FaultAction::delay, "ps.0", 10, 40ms});
}

// The job's data position as its last checkpoint (taken once every shard was done) holds it:
// every epoch has every sample done, and processed once: no shard was lost or trained twice.
void expect_every_sample_once(const std::string& checkpoints, const JobConfig& job) {
  auto latest = read_latest(checkpoints);
  ASSERT_TRUE(latest.has_value()) << "no checkpoint in " << checkpoints;
  std::istringstream position(read_whole_file(checkpoints + "/" + *latest + "/" + checkpoint_file::kPosition));
  std::string line;
  int epochs = 0;
  while (std::getline(position, line)) {
    if (line.rfind("epoch ", 0) != 0) continue;
    ++epochs;
    auto field = [&](const std::string& key) {
      auto at = line.find(" " + key + " ");
      return at == std::string::npos ? -1 : std::stoll(line.substr(at + key.size() + 2));
    };
    EXPECT_EQ(field("samples_done"), job.data.train_limit) << line;
    EXPECT_EQ(field("processed"), job.data.train_limit) << "every shard trained once: " << line;
  }
  EXPECT_EQ(epochs, job.epochs);
}

// Started again at once; the job ends with every process exiting 0, and every member registered
// again with the new coordinator (servers 2, workers 2).
void restart_and_finish(InprocCluster& c, const std::string& checkpoints) {
  c.start_coordinator();
  ASSERT_TRUE(c.log().wait_for({"took the job over", "2 server(s) kept their state"}, kJobTime)) << c.log().text();
  EXPECT_EQ(c.wait("coordinator", kJobTime), 0) << c.log().text();
  for (const char* role : {"ps.0", "ps.1", "worker.0", "worker.1"})
    EXPECT_EQ(c.wait(role, 30s), 0) << role << ": " << c.failure(role) << "\n" << c.log().text();
  EXPECT_EQ(c.log().count({"registered again with the restarted coordinator"}), 4) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"the first shard since the takeover completed"}, 0ms)) << c.log().text();
  // No lease the takeover handed back was left without its report (a drain would then wait for it).
  EXPECT_EQ(c.log().count({"did not drain within"}), 0) << c.log().text();
  expect_every_sample_once(checkpoints, c.config());
}

TEST(InprocFailover, CoordinatorKilledWhileTrainingIsTakenOverAndEveryShardIsTrainedOnce) {
  testing::TempDir checkpoints;
  FaultPlan faults;
  add_noise(faults);
  InprocCluster c(failover_job(checkpoints.path()), &faults, /*coordinator_over_tcp=*/true);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"training epoch 2"}, kJobTime)) << c.log().text();
  c.kill_coordinator();
  restart_and_finish(c, checkpoints.path());
  EXPECT_TRUE(c.log().wait_for({"it goes on from the live position at step"}, 0ms)) << c.log().text();
}

// Killed while a checkpoint drains the job: worker.1's lease requests are held back, so the
// drain cannot end (it waits for every worker to ask again) and the kill lands inside it.
TEST(InprocFailover, CoordinatorKilledDuringACheckpointDrainIsTakenOverAndTheNextCheckpointIsWritten) {
  testing::TempDir checkpoints;
  FaultPlan faults;
  add_noise(faults);
  InprocCluster c(failover_job(checkpoints.path()), &faults, /*coordinator_over_tcp=*/true);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"checkpoint ckpt-", "written"}, kJobTime)) << c.log().text();
  const std::size_t gate = 3;
  faults.add({K::LEASE_REQUEST, FaultAction::hold, "worker.1", -1});
  auto draining = [&] {
    return faults.applied(gate) > 0 &&
           c.log().count({"checkpoint at step", "draining"}) >
               c.log().count({"checkpoint ckpt-", ": cut at step"}) + c.log().count({"abandoned"});
  };
  for (auto until = std::chrono::steady_clock::now() + kJobTime; !draining();) {
    ASSERT_LT(std::chrono::steady_clock::now(), until) << c.log().text();
    std::this_thread::sleep_for(5ms);
  }
  c.kill_coordinator();
  faults.release(gate);  // the held requests died with it; the new one holds nothing back
  const int written = c.log().count({"checkpoint ckpt-", "written"});
  restart_and_finish(c, checkpoints.path());
  EXPECT_GT(c.log().count({"checkpoint ckpt-", "written"}), written) << c.log().text();
}

// Killed while an evaluation is out: the first evaluation's report is held back at the
// coordinator and dies with it; the worker that evaluated sends it again to the new one, which
// had handed the evaluation back to it and to nobody else.
TEST(InprocFailover, CoordinatorKilledDuringAnEvaluationIsTakenOverAndTheEvaluationCounts) {
  testing::TempDir checkpoints;
  FaultPlan faults;
  add_noise(faults);
  InprocCluster c(failover_job(checkpoints.path()), &faults, /*coordinator_over_tcp=*/true);
  const std::size_t gate = 3;
  faults.add({K::EVAL_DONE, FaultAction::hold, "", 1});
  c.start_all();
  for (auto until = std::chrono::steady_clock::now() + kJobTime; faults.applied(gate) == 0;) {
    ASSERT_LT(std::chrono::steady_clock::now(), until) << c.log().text();
    std::this_thread::sleep_for(5ms);
  }
  c.kill_coordinator();
  faults.release(gate);
  restart_and_finish(c, checkpoints.path());
  EXPECT_TRUE(c.log().wait_for({"evaluates epoch 1"}, 0ms)) << c.log().text();
}

// Killed after it decided the job's end and before every member heard it: the live state says
// how the job ended, and the restarted coordinator tells whoever still waits, then exits with the
// job's code. A state that old that nobody can still be waiting is left over from another run:
// ignored, and the job runs.
TEST(InprocFailover, ACoordinatorRestartedAfterTheJobEndedTellsTheMembersStillWaitingHowItEnded) {
  testing::TempDir checkpoints;
  const std::string state = checkpoints.path() + "/coordinator-state";
  testing::write_file(state,
                      "format 1\nstep 40\nseed 0\ntable_version 1\nsamples 1200\nshard_size 200\nepochs_opened 0\n"
                      "over 10\nreason lost worker.1 (rank 1), declared dead\n");
  JobConfig job = failover_job(checkpoints.path());
  {
    InprocCluster c(job, nullptr, /*coordinator_over_tcp=*/true);
    c.start_coordinator();
    c.start_server(0);  // a member still waiting: it hears how the job ended
    const int peer_lost = static_cast<int>(ExitCode::peer_lost);
    EXPECT_EQ(c.wait("ps.0", 30s), peer_lost) << c.log().text();
    EXPECT_NE(c.failure("ps.0").find("lost worker.1 (rank 1)"), std::string::npos) << c.failure("ps.0");
    EXPECT_EQ(c.wait("coordinator", 30s), peer_lost) << c.log().text();
  }
  // The same file, written longer ago than the grace: a new run.
  testing::write_file(state, "format 1\nstep 40\nseed 0\nover 10\nreason lost worker.1\n");
  std::filesystem::last_write_time(state, std::filesystem::file_time_type::clock::now() - std::chrono::hours(1));
  InprocCluster c(job, nullptr, /*coordinator_over_tcp=*/true);
  c.start_all();
  EXPECT_EQ(c.wait("coordinator", kJobTime), 0) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"ignoring", "left over from a run"}, 0ms)) << c.log().text();
  EXPECT_FALSE(std::filesystem::exists(state)) << "removed at the job's end";
}

// Without checkpoint.dir there is nothing to take over from: the members give up on the
// coordinator after cluster.dead_after_seconds, as before failover existed.
TEST(InprocFailover, WithoutACheckpointDirTheMembersExitWhenTheCoordinatorDies) {
  JobConfig job = small_job();
  job.epochs = 1000;
  job.request_timeout_seconds = 3;  // a worker waiting for a report's reply gives up after this
  InprocCluster c(job, nullptr, /*coordinator_over_tcp=*/true);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"training epoch 2"}, kJobTime)) << c.log().text();
  c.kill_coordinator();
  const int timeout = static_cast<int>(ExitCode::timeout);
  for (const char* role : {"ps.0", "ps.1", "worker.0", "worker.1"}) {
    EXPECT_EQ(c.wait(role, 30s), timeout) << role << "\n" << c.log().text();
    const std::string why = c.failure(role);
    EXPECT_TRUE(why.find("lost the coordinator") != std::string::npos ||
                why.find("no reply from the coordinator") != std::string::npos)
        << why;
  }
}

}  // namespace
}  // namespace shoal
