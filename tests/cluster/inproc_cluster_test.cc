// Whole jobs inside this process (tests/support/inproc_cluster.h): start-up in any order,
// stop requests at every phase of a worker's life, failed jobs, and faults injected at the
// transport. Each test waits for events it can observe (a log line, a fault having been
// applied, a role's exit), never for a sleep. Built once more under ThreadSanitizer.
#include "tests/support/inproc_cluster.h"

#include <gtest/gtest.h>

#include "base/error.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::InprocCluster;
using testing::small_job;
using K = wire::Envelope::Body;

constexpr auto kJobTime = 120s;
constexpr int kOk = 0;
constexpr int kConfigError = 2;
constexpr int kTimeout = static_cast<int>(ExitCode::timeout);
constexpr int kPeerLost = static_cast<int>(ExitCode::peer_lost);

void expect_everyone(InprocCluster& c, int code) {
  EXPECT_EQ(c.wait("coordinator", kJobTime), code) << c.log().text();
  for (int i = 0; i < c.config().servers; ++i) EXPECT_EQ(c.wait("ps." + std::to_string(i), 30s), code);
  for (int i = 0; i < c.config().workers; ++i) EXPECT_EQ(c.wait("worker." + std::to_string(i), 30s), code);
}

TEST(InprocCluster, JobRunsToTheEndAndEveryRoleExitsZero) {
  InprocCluster c(small_job());
  c.start_all();
  expect_everyone(c, kOk);
  EXPECT_EQ(c.log().count({"registered worker."}), 2) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"the job is over"}, 0ms));
}

TEST(InprocCluster, CoordinatorStartingLateGetsEachProcessOnce) {
  InprocCluster c(small_job());
  for (int i = 0; i < 2; ++i) c.start_server(i);
  for (int i = 0; i < 2; ++i) c.start_worker(i);
  // Every process has sent several registrations into the void (queued by ZeroMQ).
  for (const char* who : {"[ps ", "[worker "})
    ASSERT_TRUE(c.log().wait_for({who, "waiting for the coordinator", "(attempt 3)"}, 30s)) << c.log().text();
  c.start_coordinator();
  expect_everyone(c, kOk);
  // Queued copies of a registration are the same registration: no ghost members.
  EXPECT_EQ(c.log().count({"registered worker."}), 2) << c.log().text();
  EXPECT_EQ(c.log().count({"registered ps."}), 2) << c.log().text();
  EXPECT_EQ(c.log().count({"already registered"}), 0) << c.log().text();
}

TEST(InprocCluster, DuplicatedRegistrationsAreOneMember) {
  FaultPlan faults;
  faults.add({K::REGISTER, FaultAction::duplicate, "", -1});
  JobConfig job = small_job();
  InprocCluster c(job, &faults);
  c.start_all();
  expect_everyone(c, kOk);
  EXPECT_GE(faults.applied(0), 4);
  EXPECT_EQ(c.log().count({"registered worker."}), 2) << c.log().text();
  EXPECT_EQ(c.log().count({"registered ps."}), 2) << c.log().text();
}

TEST(InprocCluster, ExplicitRanksSurviveDuplicatedRegistrations) {
  FaultPlan faults;
  faults.add({K::REGISTER, FaultAction::duplicate, "worker", -1});
  InprocCluster c(small_job(), &faults);
  c.start_all();  // start_worker(i) gives node.rank = i
  expect_everyone(c, kOk);
  EXPECT_GE(faults.applied(0), 2);
}

// A worker started with another job file (a ConfigMap edited, a rolling restart half done) is
// refused at registration with a configuration error naming the first setting that differs;
// the job goes on with the others. A setting of the process's own (threads) is no difference.
TEST(InprocCluster, WorkerWithOtherJobSettingsIsRefusedNamingTheFirstThatDiffers) {
  JobConfig job = small_job();
  InprocCluster c(job);
  c.start_coordinator();
  for (int i = 0; i < job.servers; ++i) c.start_server(i);
  c.start_worker(0, [](JobConfig& w) { w.threads = 1; });
  c.start_worker(1, [](JobConfig& w) {
    w.batch_size *= 2;
    w.optimizer.lr *= 3;
  });
  EXPECT_EQ(c.wait("worker.1", 30s), kConfigError) << c.log().text();
  const std::string why = c.failure("worker.1");
  EXPECT_NE(why.find("train.batch_size = '" + std::to_string(job.batch_size * 2) + "' here, '" +
                     std::to_string(job.batch_size) + "' at the coordinator (and 1 more)"),
            std::string::npos)
      << why;
  EXPECT_TRUE(c.log().wait_for({"[coordinator", "refused worker.starting-", "train.batch_size"}, 0ms))
      << c.log().text();
  // The refused process never became a member; the right one still can.
  c.start_worker(1);
  expect_everyone(c, kOk);
  EXPECT_EQ(c.log().count({"registered worker."}), 2) << c.log().text();
}

TEST(InprocCluster, ReorderedAndDelayedPullRepliesStillTrain) {
  FaultPlan faults;
  faults.add({K::PULL_REPLY, FaultAction::reorder, "ps.0", 20});
  faults.add({K::PULL_REPLY, FaultAction::delay, "ps.1", 20, 30ms});
  InprocCluster c(small_job(), &faults);
  c.start_all();
  expect_everyone(c, kOk);
  EXPECT_EQ(faults.applied(0), 20);
  EXPECT_EQ(faults.applied(1), 20);
}

// A push is answered by a pull reply carrying its chunks (pullAfter), a pull by the same kind of
// reply: one lost reply leaves a worker waiting for ps.0 until its request timeout.
TEST(InprocCluster, DroppedReplyEndsThatWorkerWithATimeoutAndTheJobGoesOn) {
  FaultPlan faults;
  faults.add({K::PULL_REPLY, FaultAction::drop, "ps.0", 1});
  JobConfig job = small_job();
  job.request_timeout_seconds = 1;
  job.staleness = 1000;  // the other worker is never held back by the one that waits
  job.epochs = 100000;   // the job outlives the worker that lost a reply; the test ends it
  InprocCluster c(job, &faults);
  c.start_all();
  // Exactly the worker whose reply was lost gives up, naming the server, and leaves the job
  // on its way out.
  ASSERT_TRUE(c.log().wait_for({"left the job"}, kJobTime)) << c.log().text();
  EXPECT_EQ(faults.applied(0), 1);
  const int lost = c.log().text().find("worker.0 left the job") != std::string::npos ? 0 : 1;
  const std::string lost_id = "worker." + std::to_string(lost), other_id = "worker." + std::to_string(1 - lost);
  EXPECT_EQ(c.wait(lost_id, 30s), kTimeout);
  std::string failed = c.failure(lost_id);
  EXPECT_NE(failed.find("no answer for the parameters"), std::string::npos) << failed;
  EXPECT_NE(failed.find("ps.0"), std::string::npos) << failed;
  // The other worker goes on through two more epochs.
  int epochs = c.log().count({"[" + other_id, "training epoch"});
  EXPECT_TRUE(c.log().wait_for_count({"[" + other_id, "training epoch"}, epochs + 2, kJobTime)) << c.log().text();
  c.stop_worker(1 - lost);
  EXPECT_EQ(c.wait(other_id, 30s), kOk);
  EXPECT_EQ(c.wait("coordinator", kJobTime), kPeerLost);
}

TEST(InprocCluster, WorkerWhoseMessagesComeLateIsDroppedAndTheOthersGoOn) {
  FaultPlan faults;
  // Any message is a sign of life: everything worker.1 sends the coordinator comes 2 s late.
  for (auto kind : {K::HEARTBEAT, K::LEASE_REQUEST, K::LEASE_DONE, K::EVAL_DONE})
    faults.add({kind, FaultAction::delay, "worker.1", -1, 2000ms});
  JobConfig job = small_job();
  job.dead_after_seconds = 1;
  job.epochs = 100000;  // the job outlives worker.1; the test ends it
  InprocCluster c(job, &faults);
  c.start_all();
  // worker.1 is declared dead; it learns it was dropped (from a late reply) or notices the
  // coordinator's silence itself, whichever comes first: either way exit 6.
  EXPECT_EQ(c.wait("worker.1", kJobTime), kTimeout) << c.log().text();
  std::string why = c.failure("worker.1");
  EXPECT_TRUE(why.find("dropped from the job") != std::string::npos ||
              why.find("lost the coordinator") != std::string::npos)
      << why;
  EXPECT_TRUE(c.log().wait_for({"worker.1 declared dead"}, 0ms)) << c.log().text();
  // worker.0 is not held back: it goes on through two more epochs.
  int epochs = c.log().count({"[worker.0", "training epoch"});
  EXPECT_TRUE(c.log().wait_for_count({"[worker.0", "training epoch"}, epochs + 2, kJobTime)) << c.log().text();
  c.stop_worker(0);
  EXPECT_EQ(c.wait("worker.0", 30s), kOk);
  // With its last worker gone the coordinator ends the job, and says why.
  EXPECT_EQ(c.wait("coordinator", kJobTime), kPeerLost);
  EXPECT_NE(c.failure("coordinator").find("every worker is gone"), std::string::npos);
  for (int i = 0; i < 2; ++i) EXPECT_EQ(c.wait("ps." + std::to_string(i), 30s), kPeerLost);
}

TEST(InprocCluster, LostServerFailsASynchronousJobAndEveryoneSaysWhy) {
  FaultPlan faults;
  faults.add({K::HEARTBEAT, FaultAction::drop, "ps.1", -1});
  JobConfig job = small_job();
  job.staleness = 0;  // bulk-synchronous: a lost server still ends the job
  job.dead_after_seconds = 1;
  job.epochs = 100000;  // the job outlives ps.1 whatever the machine's speed: only its loss ends it
  InprocCluster c(job, &faults);
  c.start_all();
  EXPECT_EQ(c.wait("coordinator", kJobTime), kPeerLost) << c.log().text();
  EXPECT_NE(c.failure("coordinator").find("ps.1"), std::string::npos);
  EXPECT_EQ(c.wait("ps.0", 30s), kPeerLost);
  for (int i = 0; i < 2; ++i) {
    std::string w = "worker." + std::to_string(i);
    EXPECT_EQ(c.wait(w, 30s), kPeerLost) << c.log().text();
    EXPECT_NE(c.failure(w).find("the job failed (peer lost)"), std::string::npos) << c.failure(w);
  }
  // ps.1 never hears back (its heartbeats are lost): it gives up on the coordinator.
  EXPECT_EQ(c.wait("ps.1", 30s), kTimeout);
}

// An asynchronous job pauses while a server is lost: its heartbeats are dropped (so it gives
// up on the coordinator, exit 6, while the coordinator declares it dead), the workers drop their
// connections and wait; started again, it restores its range from the newest checkpoint, the
// workers reconnect to the new table and the job finishes.
TEST(InprocCluster, LostServerPausesTheJobAndComesBackRestoredFromTheCheckpoint) {
  testing::TempDir checkpoints;
  FaultPlan faults;
  JobConfig job = small_job();
  job.dead_after_seconds = 1;
  job.epochs = 6;
  job.checkpoint_dir = checkpoints.path();
  job.checkpoint_every_steps = 5;
  InprocCluster c(job, &faults);
  c.start_all();
  // Once a checkpoint holds its shard: 1.3 s of its heartbeats are lost. It gives up on the
  // coordinator after 1 s, as the coordinator on it. Every push is held meanwhile (training
  // stops), so the job cannot end before the loss is noticed however fast this machine trains;
  // the gate opens once the job has paused, and the held pushes reach servers of a table that is
  // gone.
  ASSERT_TRUE(c.log().wait_for({"checkpoint ckpt-", "written"}, kJobTime)) << c.log().text();
  const std::size_t gate = 0;
  faults.add({K::PUSH, FaultAction::hold, "worker", -1});
  faults.add({K::HEARTBEAT, FaultAction::drop, "ps.1", 13});
  ASSERT_TRUE(c.log().wait_for({"ps.1 stopped answering heartbeats; the job pauses"}, kJobTime)) << c.log().text();
  EXPECT_GT(faults.applied(gate), 0);
  faults.release(gate);
  EXPECT_EQ(c.wait("ps.1", 30s), kTimeout) << c.log().text();
  ASSERT_TRUE(c.log().wait_for({"a parameter server was lost"}, 30s)) << c.log().text();
  c.start_server(1);
  ASSERT_TRUE(c.log().wait_for({"ps.1 is back at"}, 30s)) << c.log().text();
  expect_everyone(c, kOk);
  EXPECT_TRUE(c.log().wait_for({"restored", "chunks from " + checkpoints.path()}, 0ms)) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"reconnected to 2 servers"}, 0ms)) << c.log().text();
}

// SIGTERM to a parameter server (a preempted pod): it has a checkpoint cut for it, the job pauses at
// the cut, it writes its part and leaves with code 0; started again, it restores from that very
// checkpoint. Its `preempt` is duplicated (the coordinator answers both the same way) and its
// checkpoint files arrive 300 ms late, so its replacement may knock while they are being written.
TEST(InprocCluster, PreemptedServerLeavesOnceItsShardIsCheckpointedAndItsReplacementRestoresIt) {
  testing::TempDir checkpoints;
  FaultPlan faults;
  faults.add({K::PREEMPT, FaultAction::duplicate, "ps.1", -1});
  faults.add({K::CHECKPOINT_FILES, FaultAction::delay, "ps.1", -1, 300ms});
  JobConfig job = small_job();
  job.epochs = 1000;  // outlives the preemption: the test ends the job (below)
  job.checkpoint_dir = checkpoints.path();
  job.checkpoint_every_steps = 1000000;  // only the preemption's
  InprocCluster c(job, &faults);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"training epoch 2"}, kJobTime)) << c.log().text();
  c.stop_server(1);
  ASSERT_TRUE(c.log().wait_for({"ps.1 is preempted (SIGTERM): the job pauses at the cut of checkpoint"}, 30s))
      << c.log().text();
  EXPECT_EQ(c.wait("ps.1", 30s), kOk) << c.failure("ps.1") << "\n" << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"preempted (SIGTERM), left the job: its state is in"}, 0ms)) << c.log().text();
  const std::string cut = c.log().first_line_with("is preempted (SIGTERM)");
  const std::string name = cut.substr(cut.find("ckpt-"), cut.find(' ', cut.find("ckpt-")) - cut.find("ckpt-"));
  c.start_server(1);  // its supervisor
  ASSERT_TRUE(c.log().wait_for({"ps.1 is back at", "it restores from " + checkpoints.path() + "/" + name}, 30s))
      << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"restored", "chunks from " + checkpoints.path() + "/" + name}, 30s)) << c.log().text();
  // The job goes on with the replacement: the workers start two more epochs each.
  const int epochs_before = c.log().count({"training epoch "});
  ASSERT_TRUE(c.log().wait_for_count({"training epoch "}, epochs_before + 4, kJobTime)) << c.log().text();
  c.preempt_coordinator();  // ends the job: every role exits 0
  expect_everyone(c, kOk);
}

// cluster.stall_seconds: worker.1's heartbeats go on but every push it sends arrives 3 s late, so
// it finishes a step every 3 s and holds worker.0 back (staleness). It is treated as dead (it
// exits 6 when it hears so), and worker.0 finishes the job.
TEST(InprocCluster, WorkerThatStallsWhileItsHeartbeatsGoOnIsTreatedAsDead) {
  FaultPlan faults;
  faults.add({K::PUSH, FaultAction::delay, "worker.1", -1, 3000ms});
  JobConfig job = small_job();
  job.stall_seconds = 1;
  job.epochs = 4;
  InprocCluster c(job, &faults);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"worker.1 stalled: holds work but finished no step"}, kJobTime)) << c.log().text();
  EXPECT_EQ(c.wait("worker.1", 30s), kTimeout) << c.log().text();
  EXPECT_EQ(c.wait("coordinator", kJobTime), kOk) << c.log().text();
  EXPECT_EQ(c.wait("worker.0", 30s), kOk);
  EXPECT_EQ(c.log().count({"worker.0 stalled"}), 0) << "the worker held back is not blamed";
}

TEST(InprocCluster, ClusterThatNeverAssemblesFailsEveryoneWithTimeout) {
  InprocCluster c(small_job());
  c.start_server(0);  // ps.1 never comes
  c.start_worker(0);
  c.start_worker(1);
  // Everyone that comes is ready and knocking before the coordinator's start-up clock (1 s,
  // shorter than theirs) runs.
  for (const char* who : {"[ps ", "[worker "})
    ASSERT_TRUE(c.log().wait_for_count({who, "waiting for the coordinator", "(attempt 1)"}, who[1] == 'p' ? 1 : 2, 60s))
        << c.log().text();
  c.start_coordinator(/*startup_timeout_seconds=*/1);
  EXPECT_EQ(c.wait("coordinator", kJobTime), kTimeout);
  EXPECT_NE(c.failure("coordinator").find("only 1/2 servers"), std::string::npos) << c.failure("coordinator");
  for (const char* role : {"ps.0", "worker.0", "worker.1"}) {
    EXPECT_EQ(c.wait(role, 30s), kTimeout) << role << "\n" << c.log().text();
    EXPECT_NE(c.failure(role).find("only 1/2 servers"), std::string::npos) << c.failure(role);
  }
}

// ---- A stop request (SIGTERM) at every phase of a worker's life: it leaves and exits 0.

TEST(InprocStop, BeforeItRegistered) {
  InprocCluster c(small_job());
  c.start_worker(0);  // no coordinator yet
  ASSERT_TRUE(c.log().wait_for({"waiting for the coordinator"}, 30s)) << c.log().text();
  c.stop_worker(0);
  EXPECT_EQ(c.wait("worker.0", 10s), kOk) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"before it registered; left the job"}, 0ms)) << c.log().text();
}

TEST(InprocStop, BeforeTheJobStarted) {
  InprocCluster c(small_job());
  c.start_coordinator();
  c.start_worker(0);  // registered, waiting for the others
  ASSERT_TRUE(c.log().wait_for({"registered worker.0"}, 30s)) << c.log().text();
  c.stop_worker(0);
  EXPECT_EQ(c.wait("worker.0", 10s), kOk) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"before the job started; left the job"}, 0ms)) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"worker.0 left the job"}, 10s)) << c.log().text();
}

TEST(InprocStop, WhileWaitingForParameters) {
  FaultPlan faults;
  // worker.0's pulls reach ps.0 only after the test is over: worker.0 waits for parameters.
  faults.add({K::PULL, FaultAction::delay, "worker.0", -1, 60s});
  InprocCluster c(small_job(), &faults);
  c.start_all();
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (faults.applied(0) == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  ASSERT_GT(faults.applied(0), 0) << c.log().text();
  c.stop_worker(0);
  EXPECT_EQ(c.wait("worker.0", 10s), kOk) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"while waiting for parameters", "left the job"}, 0ms)) << c.log().text();
  EXPECT_EQ(c.wait("coordinator", kJobTime), kOk) << c.log().text();  // worker.1 finishes the job
  EXPECT_EQ(c.wait("worker.1", 30s), kOk);
}

TEST(InprocStop, MidShard) {
  JobConfig job = small_job();
  job.data.train_limit = 6000;
  job.shard_size = 3000;  // a worker is inside a long shard for many steps
  InprocCluster c(job);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"worker.1", "training epoch 1"}, 30s)) << c.log().text();
  c.stop_worker(1);
  EXPECT_EQ(c.wait("worker.1", 10s), kOk) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"[worker.1", "left the job"}, 0ms)) << c.log().text();
  EXPECT_EQ(c.wait("coordinator", kJobTime), kOk) << c.log().text();
  EXPECT_EQ(c.wait("worker.0", 30s), kOk);
}

TEST(InprocStop, WhileEvaluating) {
  JobConfig job = small_job();
  job.data.test_limit = 10000;
  job.eval_batch_size = 50;
  job.epochs = 2;
  InprocCluster c(job);
  c.start_all();
  ASSERT_TRUE(c.log().wait_for({"evaluating the model after epoch 1"}, 60s)) << c.log().text();
  int evaluator = c.log().first_line_with("evaluating the model after epoch 1").find("[worker.1") != std::string::npos;
  c.stop_worker(evaluator);
  std::string name = "worker." + std::to_string(evaluator);
  EXPECT_EQ(c.wait(name, 10s), kOk) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"[" + name, "left the job"}, 0ms)) << c.log().text();
  // The evaluation went back to the queue and the other worker did it.
  EXPECT_EQ(c.wait("coordinator", kJobTime), kOk) << c.log().text();
  EXPECT_EQ(c.wait("worker." + std::to_string(1 - evaluator), 30s), kOk);
}

}  // namespace
}  // namespace shoal
