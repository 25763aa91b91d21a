// Sync jobs inside this process: ranks as threads (rank 0 running the coordinator), a real Gloo
// world on loopback TCP formed through the coordinator's store, faults injected on the control
// traffic, ranks started in either order, a rank stopped mid-epoch. Built once more under
// ThreadSanitizer with the other in-process tests.
#include <gtest/gtest.h>

#include "base/error.h"
#include "tests/support/inproc_cluster.h"
#include "tests/support/subprocess.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;
using testing::InprocCluster;
using K = wire::Envelope::Body;

JobConfig sync_job() {
  JobConfig c = testing::small_job();
  c.strategy = StrategyKind::sync;
  c.sync_backend = SyncBackend::gloo;
  c.servers = 0;
  c.workers = 2;
  c.batch_size = 25;
  c.sync_timeout_seconds = 30;
  return c;
}

TEST(InprocSync, JobRunsToTheEndThroughTheCoordinatorsStore) {
  InprocCluster c(sync_job());
  c.start_worker(0);
  c.start_worker(1);
  EXPECT_EQ(c.wait("worker.0", 120s), 0) << c.log().text();
  EXPECT_EQ(c.wait("worker.1", 30s), 0) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"all-reduce over gloo", "rank 1 of 2"}, 0ms)) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"job finished", "24 steps"}, 0ms)) << c.log().text();  // 1200 / (2 x 25)
}

// Rank 1 first: it knocks on a coordinator that rank 0 has not started yet.
TEST(InprocSync, RanksStartInEitherOrder) {
  InprocCluster c(sync_job());
  c.start_worker(1);
  ASSERT_TRUE(c.log().wait_for({"waiting for the coordinator", "(attempt 2)"}, 30s)) << c.log().text();
  c.start_worker(0);
  EXPECT_EQ(c.wait("worker.0", 120s), 0) << c.log().text();
  EXPECT_EQ(c.wait("worker.1", 30s), 0) << c.log().text();
}

// The control traffic a sync job depends on, lost, duplicated and late: store reads lost and
// retried, every store write delivered twice, registrations twice and late, lease requests
// late. The job still completes.
TEST(InprocSync, StoreAndControlFaultsAreSurvived) {
  FaultPlan faults;
  faults.add({K::STORE_GET, FaultAction::drop, "worker.1", 2});
  faults.add({K::STORE_SET, FaultAction::duplicate, "", -1});
  faults.add({K::REGISTER, FaultAction::duplicate, "", -1});
  faults.add({K::REGISTER, FaultAction::delay, "", 2, 200ms});
  faults.add({K::LEASE_REQUEST, FaultAction::delay, "worker.0", 3, 100ms});
  JobConfig job = sync_job();
  job.request_timeout_seconds = 1;
  InprocCluster c(job, &faults);
  c.start_worker(0);
  c.start_worker(1);
  EXPECT_EQ(c.wait("worker.0", 120s), 0) << c.log().text();
  EXPECT_EQ(c.wait("worker.1", 30s), 0) << c.log().text();
  EXPECT_EQ(faults.applied(0), 2) << "no store read was lost: the test proves nothing";
  EXPECT_GE(faults.applied(1), 2);
}

// A rank asked to stop (SIGTERM) mid-epoch: the world agrees on a step through the stop vote,
// rank 0 has it checkpointed (its syncCut duplicated and late: one cut still), and every rank
// exits 0. A checkpoint of every_steps comes before it, cut mid-epoch as well.
TEST(InprocSync, RankStoppedMidEpochStopsTheWorldAtOneCheckpointedStep) {
  FaultPlan faults;
  faults.add({K::SYNC_CUT, FaultAction::duplicate, "", -1});
  faults.add({K::SYNC_CUT, FaultAction::delay, "", 1, 200ms});
  testing::TempDir dir;
  JobConfig job = sync_job();
  job.data.train_limit = 12000;
  job.epochs = 3;
  job.checkpoint_dir = dir.path();
  job.checkpoint_every_steps = 40;
  InprocCluster c(job, &faults);
  c.start_worker(0);
  c.start_worker(1);
  ASSERT_TRUE(c.log().wait_for({"checkpoint of step 40 cut in epoch 1"}, 120s)) << c.log().text();
  c.stop_worker(1);
  EXPECT_EQ(c.wait("worker.1", 60s), 0) << c.log().text();
  EXPECT_EQ(c.wait("worker.0", 60s), 0) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"the world agreed to stop after step"}, 0ms)) << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"stopped on SIGTERM at step", "after checkpoint ckpt-"}, 0ms)) << c.log().text();
  EXPECT_EQ(c.log().count({"lost worker"}), 0) << c.log().text();
  EXPECT_GE(faults.applied(0), 2) << "no syncCut was duplicated: the test proves nothing";
  std::string latest = testing::read_file(dir.file("LATEST"));
  latest.erase(latest.find_last_not_of(" \n") + 1);
  EXPECT_NE(latest, "ckpt-40") << "the stop was not checkpointed";
  EXPECT_NE(testing::read_file(dir.file(latest + "/trainer")).find("within_epoch 1 position "), std::string::npos);
  EXPECT_NE(testing::read_file(dir.file(latest + "/position")).find("in_epoch 1 position "), std::string::npos);
}

// sync.elastic in-process (so also under ThreadSanitizer): rank 2 of 3 stops mid-epoch (SIGTERM:
// it leaves the job), ranks 0 and 1 form a world of 2 in place and go on; a new rank 2 then
// registers, is admitted while every rank trains the same epoch, takes the members' state by
// broadcast, and the three finish the job together.
TEST(InprocSync, ElasticRankLeavesTheOthersGoOnThenItsReplacementJoins) {
  JobConfig job = sync_job();
  job.workers = 3;
  job.sync_elastic = true;
  job.data.train_limit = 6000;
  job.epochs = 3;
  testing::TempDir dir;
  job.metrics_file = dir.file("metrics.jsonl");
  // Ranks 0 and 1 report the end of their first epoch through a gate that opens once the
  // replacement has registered: the job cannot run out of epochs before it starts (on a loaded
  // machine two ranks once finished before a new rank had started), and the epoch they train
  // stays unreported, so the coordinator admits the replacement into it.
  FaultPlan faults;
  faults.add({K::LEASE_DONE, FaultAction::hold, "worker.0", -1});
  faults.add({K::LEASE_DONE, FaultAction::hold, "worker.1", -1});
  InprocCluster c(job, &faults);
  for (int r = 0; r < 3; ++r) c.start_worker(r);
  ASSERT_TRUE(c.log().wait_for({"worker.2", "training epoch 1"}, 120s)) << c.log().text();
  c.stop_worker(2);
  EXPECT_EQ(c.wait("worker.2", 60s), 0) << c.log().text();
  ASSERT_TRUE(c.log().wait_for({"the world is re-formed: rank 1 of 2 (was 1 of 3)"}, 60s)) << c.log().text();
  c.start_worker(2);
  ASSERT_TRUE(c.log().wait_for({"registered worker.2 as rank 2: it joins the running world"}, 120s)) << c.log().text();
  faults.release(0);
  faults.release(1);
  ASSERT_TRUE(c.log().wait_for({"joined the running job: rank 2 of 3"}, 120s)) << c.log().text();
  for (const char* r : {"worker.0", "worker.1", "worker.2"})
    EXPECT_EQ(c.wait(r, 240s), 0) << r << "\n" << c.log().text();
  EXPECT_TRUE(c.log().wait_for({"the world is re-formed: rank 0 of 3 (was 0 of 2)"}, 0ms)) << c.log().text();
  // Every epoch counts every sample once: the leaver's completed steps, the survivors', the joiner's.
  auto epochs = testing::lines_with(testing::read_file(job.metrics_file), "\"event\": \"epoch\"");
  ASSERT_EQ(epochs.size(), 3u) << c.log().text();
  for (const auto& e : epochs) EXPECT_EQ(testing::json_number(e, "samples_done"), 6000) << e;
}

}  // namespace
}  // namespace shoal
