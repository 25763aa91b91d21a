// The coordinator's responsibilities as classes, each tested without a cluster: the checkpoint
// driver (with a clock stepped by hand and the servers' side played by the test), the elastic
// sync world, the failure policy and registration retries.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "base/error.h"
#include "checkpoint/checkpoint.h"
#include "coordinator/checkpoint_driver.h"
#include "coordinator/elastic_world.h"
#include "coordinator/failure_policy.h"
#include "coordinator/membership.h"
#include "coordinator/sync_book.h"

namespace shoal {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using TimePoint = CheckpointDriver::TimePoint;

// The servers' side of a cut: each order is recorded and its file written at once, as a server
// writes its shard in the background; a server named in `refuse` does not take the order.
class TestServers : public SnapshotOrders {
 public:
  void order_snapshot(const std::string& server, std::int64_t step, const std::string& dir) override {
    if (refuse.count(server)) throw TimeoutError(server + " timed out");
    orders.push_back(server + "@" + std::to_string(step));
    written[server] = write_file_atomic(dir, "params." + server, "values of " + server);
  }
  std::set<std::string> refuse;
  std::vector<std::string> orders;
  std::map<std::string, FileEntry> written;
};

class CheckpointDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = (fs::temp_directory_path() / ("shoal-driver-" + std::to_string(::getpid()) + "-" +
                                          ::testing::UnitTest::GetInstance()->current_test_info()->name()))
                .string();
    fs::remove_all(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  CheckpointDriver make(std::int64_t every_steps, double every_seconds = 0, int keep = 3) {
    CheckpointSettings s;
    s.root = root_;
    s.keep = keep;
    s.every_steps = every_steps;
    s.every_seconds = every_seconds;
    s.request_timeout_seconds = 5;
    s.retry_after_seconds = 10;
    s.seed = 42;
    CheckpointDriver d(s, "model mlp\n", "[job]\n", Logger("test", LogLevel::error), metrics_,
                       [this] { return now_; });
    d.start();
    return d;
  }
  // Every file each server wrote, reported as the server would.
  void report(CheckpointDriver& d, std::int64_t step) {
    for (const auto& [server, file] : servers_.written) EXPECT_EQ(d.files_reported(server, step, {file}, 0, 0), "");
    servers_.written.clear();
  }

  std::string root_;
  TimePoint now_ = TimePoint{} + 1000s;
  MetricsWriter metrics_;
  TestServers servers_;
};

TEST_F(CheckpointDriverTest, DueEveryNStepsOrSecondsAndNeverWithNothingNew) {
  CheckpointDriver by_steps = make(100);
  EXPECT_FALSE(by_steps.due(99));
  EXPECT_TRUE(by_steps.due(100));
  CheckpointDriver by_time = make(0, 30);
  EXPECT_FALSE(by_time.due(5));
  now_ += 31s;
  EXPECT_TRUE(by_time.due(5));
  by_time.restored(5, root_ + "/ckpt-5");
  EXPECT_FALSE(by_time.due(5)) << "the newest checkpoint already holds step 5";
  by_time.begin(6);
  EXPECT_FALSE(by_time.due(6)) << "one at a time";
  CheckpointSettings off;
  CheckpointDriver disabled(off, "", "", Logger("test", LogLevel::error), metrics_, [this] { return now_; });
  EXPECT_FALSE(disabled.enabled());
  EXPECT_FALSE(disabled.due(1000));
}

TEST_F(CheckpointDriverTest, ACutAndEveryFileMakeACompleteCheckpointNamedInLatest) {
  CheckpointDriver d = make(10);
  d.begin(10);
  EXPECT_TRUE(d.draining());
  now_ += 50ms;  // the drain
  ASSERT_TRUE(d.cut(12, "epoch 1 shards 0-3\n", {"ps.0", "ps.1"}, &servers_, /*buffers=*/false));
  EXPECT_EQ(servers_.orders, (std::vector<std::string>{"ps.0@12", "ps.1@12"}));
  EXPECT_FALSE(d.poll()) << "no files yet";
  auto ps0 = servers_.written.at("ps.0");
  EXPECT_EQ(d.files_reported("ps.0", 12, {ps0}, 0.01, 0.2), "");
  EXPECT_FALSE(d.poll()) << "ps.1's files are still missing";
  EXPECT_EQ(d.files_reported("ps.1", 12, {servers_.written.at("ps.1")}, 0.01, 0.2), "");
  ASSERT_TRUE(d.poll());
  EXPECT_TRUE(d.last_outcome().written);
  EXPECT_EQ(d.current(), nullptr);
  EXPECT_EQ(d.newest_step(), 12);
  EXPECT_EQ(d.newest_dir(), root_ + "/ckpt-12");
  EXPECT_EQ(read_latest(root_), std::optional<std::string>("ckpt-12"));
  Manifest m = verify_checkpoint(root_ + "/ckpt-12");  // every CRC checked
  EXPECT_EQ(m.step, 12);
  EXPECT_EQ(m.files.size(), 5u) << "two servers' files, position, layout, job.ini";
  EXPECT_EQ(read_whole_file(root_ + "/ckpt-12/" + checkpoint_file::kPosition),
            "format 1\nstep 12\nseed 42\nepoch 1 shards 0-3\n");
  EXPECT_EQ(read_whole_file(root_ + "/ckpt-12/" + checkpoint_file::kLayout), "model mlp\n");
  EXPECT_FALSE(d.due(12));
}

TEST_F(CheckpointDriverTest, AServerThatDoesNotTakeItsSnapshotAbandonsItAndTheNextWaitsALivenessPeriod) {
  CheckpointDriver d = make(10);
  servers_.refuse = {"ps.1"};
  d.begin(10);
  EXPECT_FALSE(d.cut(10, "", {"ps.0", "ps.1"}, &servers_, false));
  EXPECT_EQ(d.current(), nullptr);
  EXPECT_FALSE(d.last_outcome().written);
  EXPECT_NE(d.last_outcome().what.find("ps.1 did not take its snapshot: ps.1 timed out"), std::string::npos)
      << d.last_outcome().what;
  EXPECT_FALSE(fs::exists(root_ + "/ckpt-10/" + checkpoint_file::kManifest));
  EXPECT_FALSE(d.due(20)) << "not again at once";
  now_ += 9s;
  EXPECT_FALSE(d.retry_wait_over());
  now_ += 2s;
  EXPECT_TRUE(d.retry_wait_over());
  EXPECT_TRUE(d.due(20));
}

TEST_F(CheckpointDriverTest, FilesNotWaitedForOrWithBadNamesAreRefused) {
  CheckpointDriver d = make(10);
  EXPECT_NE(d.files_reported("ps.0", 10, {}, 0, 0), "") << "no checkpoint in progress";
  d.begin(10);
  EXPECT_NE(d.files_reported("ps.0", 10, {}, 0, 0), "") << "still draining";
  ASSERT_TRUE(d.cut(10, "", {"ps.0"}, &servers_, /*buffers=*/true));
  EXPECT_NE(d.files_reported("ps.0", 9, {}, 0, 0), "") << "another step";
  EXPECT_NE(d.files_reported("ps.7", 10, {}, 0, 0), "") << "not one of its servers";
  for (const char* bad : {"", "../escape", "dir/file", ".hidden", "MANIFEST", "position", "layout", "job.ini"}) {
    const std::string why = d.files_reported("ps.0", 10, {FileEntry{bad, 1, 0}}, 0, 0);
    EXPECT_NE(why.find("bad checkpoint file name"), std::string::npos) << "'" << bad << "': " << why;
  }
  EXPECT_EQ(d.current()->files.size(), 0u) << "a refused report leaves nothing behind";
  EXPECT_TRUE(d.wants_buffers_holder());
  d.set_buffers_holder("worker.1");
  EXPECT_FALSE(d.wants_buffers_holder());
  d.worker_gone("worker.1");
  EXPECT_TRUE(d.wants_buffers_holder()) << "its holder died: another worker is asked";
}

TEST_F(CheckpointDriverTest, FilesOverdueAbandonTheCheckpointNamingWhoIsMissing) {
  CheckpointDriver d = make(10);
  d.begin(10);
  ASSERT_TRUE(d.cut(10, "", {"ps.0", "ps.1"}, &servers_, /*buffers=*/true));
  EXPECT_EQ(d.files_reported("ps.0", 10, {servers_.written.at("ps.0")}, 0, 0), "");
  now_ += 9s;
  EXPECT_FALSE(d.poll());
  now_ += 2s;  // past twice cluster.request_timeout_seconds
  ASSERT_TRUE(d.poll());
  EXPECT_FALSE(d.last_outcome().written);
  EXPECT_EQ(d.last_outcome().what, "no files from buffers ps.1");
  EXPECT_EQ(d.newest_step(), -1);
  EXPECT_FALSE(read_latest(root_).has_value());
}

TEST_F(CheckpointDriverTest, ADrainThatDoesNotEndIsOverdueAfterTheRequestTimeout) {
  CheckpointDriver d = make(10);
  d.begin(10);
  now_ += 4s;
  EXPECT_FALSE(d.drain_overdue());
  now_ += 2s;
  EXPECT_TRUE(d.drain_overdue());
  d.abandon("the job did not drain");
  EXPECT_EQ(d.current(), nullptr);
}

TEST_F(CheckpointDriverTest, AStepAlreadyCheckpointedIsNotTakenAgainAndOnlyTheNewestAreKept) {
  CheckpointDriver d = make(1, 0, /*keep=*/2);
  for (std::int64_t step : {1, 2, 3}) {
    d.begin(step);
    ASSERT_TRUE(d.cut(step, "", {"ps.0"}, &servers_, false));
    report(d, step);
    ASSERT_TRUE(d.poll());
    now_ += 1s;
  }
  EXPECT_FALSE(fs::exists(root_ + "/ckpt-1")) << "checkpoint.keep = 2";
  EXPECT_TRUE(fs::exists(root_ + "/ckpt-2/" + checkpoint_file::kManifest));
  // A job resumed from ckpt-3 that reaches the cut at step 3 again: nothing is written.
  CheckpointDriver resumed = make(1);
  resumed.begin(3);
  servers_.orders.clear();
  EXPECT_FALSE(resumed.cut(3, "", {"ps.0"}, &servers_, false));
  EXPECT_TRUE(servers_.orders.empty());
  EXPECT_EQ(resumed.newest_step(), 3);
  EXPECT_TRUE(resumed.last_outcome().written);
  EXPECT_TRUE(verify_checkpoint(root_ + "/ckpt-3").step == 3) << "the complete one is left as it was";
}

TEST_F(CheckpointDriverTest, StaleForTermFollowsTheNewestCheckpointsAge) {
  CheckpointSettings s;
  s.root = root_;
  s.on_term_older_than_seconds = 60;
  CheckpointDriver d(s, "", "", Logger("test", LogLevel::error), metrics_, [this] { return now_; });
  d.start();
  EXPECT_TRUE(d.stale_for_term()) << "no checkpoint yet";
  d.begin(5);
  ASSERT_TRUE(d.cut(5, "", {}, &servers_, false));
  ASSERT_TRUE(d.poll());
  now_ += 30s;
  EXPECT_FALSE(d.stale_for_term());
  now_ += 31s;
  EXPECT_TRUE(d.stale_for_term());
}

// The elastic world: survivors keep their order, a joiner comes last, and each rank learns the
// rank every new rank had before.
TEST(ElasticSyncWorld, SurvivorsKeepTheirOrderAndAJoinerComesAfterThem) {
  SyncBook book(1200, 2, 4);
  std::set<std::string> alive{"worker.0", "worker.1", "worker.2", "worker.3"};
  auto is_alive = [&](const std::string& id) { return alive.count(id) > 0; };
  ElasticSyncWorld world(book, {{"worker.0", 0}, {"worker.1", 1}, {"worker.2", 2}, {"worker.3", 3}});
  const auto now = std::chrono::steady_clock::now();
  for (const auto& w : alive) ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
  EXPECT_FALSE(world.reformed());
  EXPECT_FALSE(world.place("worker.1").has_value()) << "the ranks of registration until a change";

  alive.erase("worker.1");
  world.remove("worker.1", now, is_alive);
  EXPECT_TRUE(world.reformed());
  EXPECT_EQ(world.size(), 3u);
  EXPECT_FALSE(world.contains("worker.1"));
  EXPECT_FALSE(world.place("worker.1").has_value());
  auto p3 = world.place("worker.3");
  ASSERT_TRUE(p3.has_value());
  EXPECT_EQ(p3->rank, 2);
  EXPECT_EQ(p3->size, 3);
  EXPECT_EQ(p3->previous_ranks, (std::vector<int>{0, 2, 3}));

  // worker.1 is back: admitted only while every rank trains the same epoch.
  alive.insert("worker.1");
  world.add_pending("worker.1");
  EXPECT_TRUE(world.pending("worker.1"));
  book.complete("worker.0", 1, 0, ShardStats{400, 1, 1}, 1, now);
  EXPECT_FALSE(world.can_admit()) << "worker.0 is past training epoch 1";
  for (const char* w : {"worker.2", "worker.3"}) book.complete(w, 1, 0, ShardStats{400, 1, 1}, 1, now);
  for (const char* w : {"worker.0", "worker.2", "worker.3"}) book.evaluated(w, 1, 0.5, 0.8);
  for (const char* w : {"worker.0", "worker.2", "worker.3"}) ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
  ASSERT_TRUE(world.can_admit());
  std::vector<std::string> admitted;
  world.admit_pending(is_alive, [&](const std::string& id) { admitted.push_back(id); });
  EXPECT_EQ(admitted, (std::vector<std::string>{"worker.1"}));
  EXPECT_FALSE(world.pending("worker.1"));
  auto p1 = world.place("worker.1");
  ASSERT_TRUE(p1.has_value());
  EXPECT_EQ(p1->rank, 3) << "after the survivors";
  EXPECT_EQ(p1->previous_ranks, (std::vector<int>{0, 1, 2, -1}));
  EXPECT_EQ(book.next("worker.1", now).shard.epoch, 2) << "it trains the epoch the world trains";
}

TEST(ElasticSyncWorld, AJoinerThatDiesBeforeItsAdmissionChangesNothing) {
  SyncBook book(600, 2, 2);
  ElasticSyncWorld world(book, {{"worker.0", 0}, {"worker.1", 1}});
  world.add_pending("worker.2");
  EXPECT_FALSE(world.can_admit()) << "no rank asked for work yet";
  EXPECT_TRUE(world.drop_pending("worker.2"));
  EXPECT_FALSE(world.drop_pending("worker.2"));
  EXPECT_FALSE(world.reformed());
}

// What a loss means, for every kind of job (docs/fault-tolerance.md).
TEST(FailurePolicy, EachLossHasTheDocumentedConsequence) {
  using A = FailureDecision::Action;
  struct Case {
    const char* what;
    FailureSettings settings;
    WorkerLoss loss;
    A action;
    bool ends;
  };
  auto loss = [](int rank, bool in_world, std::size_t live, bool finished = false, bool pending = false) {
    WorkerLoss l;
    l.who = "worker." + std::to_string(rank) + " (rank " + std::to_string(rank) + ")";
    l.how = "declared dead";
    l.rank = rank;
    l.in_world = in_world;
    l.live_workers = live;
    l.finished = finished;
    l.pending_joiner = pending;
    l.started = true;
    return l;
  };
  const FailureSettings sync{true, false, 0}, elastic{true, true, 0}, async{false, false, 2};
  const Case cases[] = {
      {"sync, not elastic: the job ends", sync, loss(2, true, 3), A::end_job, true},
      {"elastic: the world re-forms", elastic, loss(2, true, 3), A::reform, false},
      {"elastic, rank 0 (hosts the coordinator): the job ends", elastic, loss(0, true, 3), A::end_job, true},
      {"elastic, a rank not in the world", elastic, loss(2, false, 3), A::end_job, true},
      {"a joiner not admitted yet", elastic, loss(2, false, 3, false, true), A::none, false},
      {"sync, after the last epoch", sync, loss(1, true, 1, true), A::none, false},
      {"async: leases back to the queue", async, loss(1, false, 2), A::release, false},
      {"async, the last worker", async, loss(1, false, 0), A::release, true},
      {"async, the last worker after the last epoch", async, loss(1, false, 0, true), A::release, false},
  };
  for (const Case& c : cases) {
    FailureDecision d = FailurePolicy(c.settings).worker_lost(c.loss);
    EXPECT_EQ(d.action, c.action) << c.what;
    EXPECT_EQ(!d.reason.empty(), c.ends) << c.what << ": " << d.reason;
  }
  WorkerLoss before_start = loss(1, true, 1);
  before_start.started = false;
  EXPECT_EQ(FailurePolicy(sync).worker_lost(before_start).action, A::none) << "the world forms at the start";
  EXPECT_NE(FailurePolicy(sync).worker_lost(loss(2, true, 3)).reason.find("sync.elastic is off"), std::string::npos);

  EXPECT_EQ(FailurePolicy(async).server_lost("ps.1", "left").action, A::pause);
  FailureDecision lockstep = FailurePolicy(FailureSettings{false, false, 0}).server_lost("ps.1", "stopped answering");
  EXPECT_EQ(lockstep.action, A::end_job);
  EXPECT_NE(lockstep.reason.find("parameter server ps.1 stopped answering"), std::string::npos) << lockstep.reason;
}

TEST(Membership, ARetriedRegistrationIsAnsweredWithTheSameMember) {
  Membership m(10s);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(m.registered_by(77), nullptr);
  const Member& w = m.add(wire::Role::WORKER, -1, "", t0);
  m.remember(77, w.id);
  ASSERT_NE(m.registered_by(77), nullptr);
  EXPECT_EQ(m.registered_by(77)->id, "worker.0");
  EXPECT_EQ(m.registered_by(78), nullptr);
}

}  // namespace
}  // namespace shoal
