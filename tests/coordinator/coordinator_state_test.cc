// The coordinator's plain state classes: the partitioner, membership and the lease book,
// including the contract fault tolerance rests on — a dead or slow worker's shards are done by
// others and every sample of every epoch is done exactly once in the count.
#include <capnp/message.h>
#include <gtest/gtest.h>

#include <set>
#include <tuple>

#include "base/error.h"
#include "coordinator/lease_book.h"
#include "coordinator/membership.h"
#include "coordinator/partitioner.h"
#include "coordinator/rendezvous_table.h"
#include "coordinator/sync_book.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;

std::vector<ServerRange> servers(int n) {
  std::vector<ServerRange> s;
  for (int i = 0; i < n; ++i)
    s.push_back(ServerRange{"ps." + std::to_string(i), "inproc://ps" + std::to_string(i), 0, 0});
  return s;
}

TEST(Partitioner, ContiguousBalancedRanges) {
  for (int n : {1, 2, 3, 4}) {
    PartitionTable t = make_partition(10'000'000, 1 << 20, servers(n));
    // 4 MiB chunks of a 40 MB model, or smaller so that each server gets at least 4.
    EXPECT_EQ(t.chunks.size(), n <= 2 ? 10u : static_cast<std::size_t>(4 * n)) << n << " servers";
    for (const auto& c : t.chunks) EXPECT_LE(c.numel, 1 << 20);
    std::int64_t next = 0;
    for (const auto& c : t.chunks) {
      EXPECT_EQ(c.offset, next);
      next += c.numel;
    }
    EXPECT_EQ(next, 10'000'000);
    std::uint32_t key = 0;
    for (std::size_t s = 0; s < t.servers.size(); ++s) {
      EXPECT_EQ(t.servers[s].first_key, key);
      key = t.servers[s].end_key;
      double share = static_cast<double>(t.server_elements(s)) / 1e7;
      EXPECT_NEAR(share, 1.0 / n, 0.06) << n << " servers, server " << s;
    }
    EXPECT_EQ(key, t.chunks.size());
  }
  // A small model still gives every server chunks.
  PartitionTable small = make_partition(421642, 1 << 20, servers(2));
  EXPECT_GE(small.chunks.size(), 8u);
  EXPECT_GT(small.server_elements(0), 0);
  EXPECT_GT(small.server_elements(1), 0);
}

TEST(PartitionTableWire, RoundTripAndRejectsInconsistentTables) {
  PartitionTable t = make_partition(1000, 100, servers(3));
  t.version = 4;
  t.steps_per_epoch = 7;
  t.live_workers = {"worker.0", "worker.1"};
  capnp::MallocMessageBuilder b;
  auto root = b.initRoot<wire::PartitionTable>();
  t.to_wire(root);
  PartitionTable back = PartitionTable::from_wire(root.asReader());
  EXPECT_EQ(back.chunks.size(), t.chunks.size());
  EXPECT_EQ(back.servers[2].end_key, t.servers[2].end_key);
  EXPECT_EQ(back.live_workers, t.live_workers);
  EXPECT_EQ(back.steps_per_epoch, 7);
  root.getChunks()[3].setOffset(5);  // a gap
  EXPECT_THROW(PartitionTable::from_wire(root.asReader()), ProtocolError);
  t.to_wire(root);
  root.getServers()[1].setFirstKey(0);  // overlapping ranges
  EXPECT_THROW(PartitionTable::from_wire(root.asReader()), ProtocolError);
  // An elastic sync world: the requester's place, and the previous ranks of the members.
  t.world_rank = 1;
  t.world_size = 2;
  t.previous_ranks = {0, 2};
  t.to_wire(root);
  back = PartitionTable::from_wire(root.asReader());
  EXPECT_EQ(back.world_rank, 1);
  EXPECT_EQ(back.previous_ranks, (std::vector<int>{0, 2}));
  root.setWorldRank(2);  // outside the world
  EXPECT_THROW(PartitionTable::from_wire(root.asReader()), ProtocolError);
  t.previous_ranks = {2, 0};  // not in order
  t.to_wire(root);
  EXPECT_THROW(PartitionTable::from_wire(root.asReader()), ProtocolError);
  t.previous_ranks = {0};  // not one per member
  t.to_wire(root);
  EXPECT_THROW(PartitionTable::from_wire(root.asReader()), ProtocolError);
  // Ranks that joined (-1) come after the members of the previous world, never first.
  t.world_size = 3;
  t.previous_ranks = {0, 2, -1};
  t.to_wire(root);
  EXPECT_EQ(PartitionTable::from_wire(root.asReader()).previous_ranks, (std::vector<int>{0, 2, -1}));
  for (std::vector<int> bad : {std::vector<int>{0, -1, 2}, {-1, 0, 1}, {0, 1, -2}}) {
    t.previous_ranks = bad;
    t.to_wire(root);
    EXPECT_THROW(PartitionTable::from_wire(root.asReader()), ProtocolError) << bad[0] << bad[1] << bad[2];
  }
}

TEST(Membership, RegistrationHeartbeatsAndDeath) {
  Membership m(5s);
  auto t0 = Clock::now();
  EXPECT_EQ(m.add(wire::Role::SERVER, -1, "tcp://a", t0).id, "ps.0");
  EXPECT_EQ(m.add(wire::Role::SERVER, -1, "tcp://b", t0).id, "ps.1");
  EXPECT_EQ(m.add(wire::Role::WORKER, 3, "", t0).id, "worker.3");
  EXPECT_EQ(m.add(wire::Role::WORKER, -1, "", t0).id, "worker.0");
  EXPECT_THROW(m.add(wire::Role::WORKER, 3, "", t0), ProtocolError) << "a live id cannot register twice";
  auto gen = m.generation();
  EXPECT_TRUE(m.heard_from("worker.3", t0 + 4s));
  EXPECT_FALSE(m.heard_from("worker.9", t0));
  auto dead = m.expire(t0 + 6s);
  // worker.3 was heard at 4 s; the others were silent since 0 s.
  EXPECT_EQ(std::set<std::string>(dead.begin(), dead.end()), (std::set<std::string>{"ps.0", "ps.1", "worker.0"}));
  EXPECT_GT(m.generation(), gen);
  EXPECT_EQ(m.live_workers(), std::vector<std::string>{"worker.3"});
  EXPECT_FALSE(m.heard_from("worker.0", t0 + 7s)) << "the dead stay dead";
  m.mark_finished("worker.3");
  EXPECT_TRUE(m.live_workers().empty());
}

TEST(LeaseBook, EveryShardOnceAcrossEpochsThenEvaluationThenFinished) {
  LeaseBook book(1000, 300, 2, 60s);
  auto now = Clock::now();
  std::map<std::int64_t, std::int64_t> samples;
  int evaluations = 0;
  for (int guard = 0; guard < 100 && !book.finished(); ++guard) {
    auto task = book.next("w", now);
    if (task.kind == LeaseBook::Task::train) {
      samples[task.shard.epoch] += task.shard.size();
      book.complete("w", task.shard.epoch, task.shard.index, ShardStats{task.shard.size(), 1.0, 1}, 0, now);
    } else if (task.kind == LeaseBook::Task::evaluate) {
      ++evaluations;
      EXPECT_TRUE(book.evaluated("w", task.epoch, 0.5, 0.9));
    }
  }
  EXPECT_TRUE(book.finished());
  EXPECT_EQ(samples[1], 1000);
  EXPECT_EQ(samples[2], 1000);
  EXPECT_EQ(evaluations, 2);
  auto reports = book.take_completed();
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports[0].samples_done, 1000);
  EXPECT_EQ(reports[0].shards_total, 4);
  EXPECT_EQ(book.next("w", now).kind, LeaseBook::Task::finished);
}

TEST(LeaseBook, DeadWorkersShardsAreRedoneByOthers) {
  LeaseBook book(1000, 250, 1, 60s);
  auto now = Clock::now();
  auto a1 = book.next("a", now), b1 = book.next("b", now), a2 = book.next("a", now);
  ASSERT_EQ(a1.kind, LeaseBook::Task::train);
  // a asked again before it reported: it never got the first grant (a lost reply), so it is
  // handed the same shard, not a second one.
  EXPECT_EQ(a2.shard.index, a1.shard.index);
  EXPECT_EQ(book.release("a"), 1) << "a's one lease returns";
  std::set<std::int64_t> done;
  book.complete("b", 1, b1.shard.index, ShardStats{250, 0, 0}, 0, now);
  done.insert(b1.shard.index);
  while (true) {
    auto t = book.next("b", now);
    if (t.kind != LeaseBook::Task::train) break;
    done.insert(t.shard.index);
    book.complete("b", 1, t.shard.index, ShardStats{250, 0, 0}, 0, now);
  }
  EXPECT_EQ(done, (std::set<std::int64_t>{0, 1, 2, 3}));
  EXPECT_TRUE(done.count(a1.shard.index) && done.count(a2.shard.index));
  const EpochReport& r = book.reports().at(1);
  EXPECT_EQ(r.samples_done, 1000);
  EXPECT_EQ(r.shards_released, 1);
  // A late completion from the dead worker counts as processed, not as done twice.
  EXPECT_FALSE(book.complete("a", 1, a1.shard.index, ShardStats{250, 0, 0}, 0, now));
  EXPECT_EQ(book.reports().at(1).samples_done, 1000);
  EXPECT_EQ(book.reports().at(1).samples_processed, 1250);
}

TEST(LeaseBook, ExpiredLeasesAndEvaluationsGoBackToTheQueue) {
  LeaseBook book(100, 100, 1, 10s);
  auto now = Clock::now();
  auto t = book.next("slow", now);
  ASSERT_EQ(t.kind, LeaseBook::Task::train);
  EXPECT_EQ(book.next("fast", now).kind, LeaseBook::Task::wait) << "nothing left, but not finished";
  EXPECT_EQ(book.expire(now + 5s), 0);
  EXPECT_EQ(book.expire(now + 11s), 1);
  auto again = book.next("fast", now + 11s);
  ASSERT_EQ(again.kind, LeaseBook::Task::train);
  EXPECT_EQ(again.shard.index, t.shard.index);
  book.complete("fast", 1, again.shard.index, ShardStats{100, 0, 0}, 0, now + 12s);
  auto eval = book.next("fast", now + 12s);
  ASSERT_EQ(eval.kind, LeaseBook::Task::evaluate);
  EXPECT_EQ(book.release("fast"), 0);
  EXPECT_EQ(book.next("other", now + 13s).kind, LeaseBook::Task::evaluate) << "the evaluation is reassigned";
}

// Failover: a restarted coordinator rebuilds the book from the live position and the work the
// members say they hold. Held shards (even of an epoch opened after the position was written)
// and a held evaluation go to their holders, never to whoever asks first; what is done or
// leased to nobody is refused; every shard is done once.
TEST(LeaseBook, WorkHeldWhenTheCoordinatorDiedGoesBackToItsHolderAfterARestore) {
  auto now = Clock::now();
  LeaseBook before(1000, 250, 3, 60s);
  // Epoch 1 done and evaluated but for its evaluation; epoch 2: shards 0 and 1 done.
  for (int i = 0; i < 4; ++i) {
    auto t = before.next("a", now);
    ASSERT_EQ(t.kind, LeaseBook::Task::train);
    before.complete("a", 1, t.shard.index, ShardStats{250, 1.0, 100}, 0, now);
  }
  ASSERT_EQ(before.next("b", now).kind, LeaseBook::Task::evaluate);  // b evaluates epoch 1
  for (int i = 0; i < 2; ++i) {
    auto t = before.next("a", now);
    before.complete("a", 2, t.shard.index, ShardStats{250, 1.0, 100}, 0, now);
  }
  const std::string position = before.save();
  // After the position was written: a took shard 2, c shard 3, and a shard of epoch 3 was
  // handed to d (epoch 3 opened).
  LeaseBook after(1000, 250, 3, 60s);
  after.restore(position, now);
  EXPECT_TRUE(after.hold("b", /*evaluation=*/true, 1, 0, now));
  EXPECT_FALSE(after.hold("x", true, 1, 0, now)) << "the evaluation is b's";
  EXPECT_TRUE(after.hold("a", false, 2, 2, now));
  EXPECT_TRUE(after.hold("c", false, 2, 3, now));
  EXPECT_FALSE(after.hold("x", false, 2, 0, now)) << "done before the restart";
  EXPECT_FALSE(after.hold("x", false, 2, 3, now)) << "held by c";
  EXPECT_FALSE(after.hold("x", false, 9, 0, now)) << "no such epoch";
  EXPECT_TRUE(after.hold("d", false, 3, 1, now));
  EXPECT_TRUE(after.shard_done(2, 1));
  EXPECT_FALSE(after.shard_done(2, 2));
  // Everyone else is handed the rest of epoch 3, nothing held.
  std::set<std::pair<std::int64_t, std::int64_t>> handed;
  for (int guard = 0; guard < 100; ++guard) {
    auto t = after.next("e", now);
    if (t.kind != LeaseBook::Task::train) break;
    handed.insert({t.shard.epoch, t.shard.index});
    after.complete("e", t.shard.epoch, t.shard.index, ShardStats{250, 0, 0}, 0, now);
  }
  EXPECT_EQ(handed, (std::set<std::pair<std::int64_t, std::int64_t>>{{3, 0}, {3, 2}, {3, 3}}));
  for (auto [who, epoch, index] : std::vector<std::tuple<std::string, int, int>>{{"a", 2, 2}, {"c", 2, 3}, {"d", 3, 1}})
    EXPECT_TRUE(after.complete(who, epoch, index, ShardStats{250, 0, 0}, 0, now));
  EXPECT_TRUE(after.evaluated("b", 1, 0.5, 0.8));
  for (std::int64_t e = 1; e <= 3; ++e) {
    EXPECT_EQ(after.reports().at(e).samples_done, 1000) << e;
    EXPECT_EQ(after.reports().at(e).samples_processed, 1000) << "epoch " << e << ": every shard once";
  }
}

// The per-rank plan of a sync epoch: every rank takes the same number of steps, the ranks'
// positions of a step are disjoint and together are exactly the step's positions, and every
// position of [begin, end) is trained once except a tail shorter than the world.
TEST(SyncPlan, EveryRankTakesTheSameStepsAndEveryPositionOnce) {
  struct Case {
    std::int64_t begin, end, batch;
    int world;
  };
  for (const Case& c : {Case{0, 60000, 32, 2}, Case{0, 1000, 32, 3}, Case{100, 1101, 16, 4}, Case{0, 65, 32, 2},
                        Case{0, 66, 32, 3}, Case{0, 2, 32, 3}, Case{0, 10, 1, 1}, Case{5, 5, 8, 2}}) {
    SCOPED_TRACE(testing::Message() << "[" << c.begin << ", " << c.end << ") batch " << c.batch << " world "
                                    << c.world);
    std::vector<std::vector<RankStep>> plans;
    for (int r = 0; r < c.world; ++r) plans.push_back(plan_rank_steps(c.begin, c.end, c.batch, c.world, r));
    std::multiset<std::int64_t> seen;
    for (int r = 0; r < c.world; ++r) {
      ASSERT_EQ(plans[static_cast<std::size_t>(r)].size(), plans[0].size()) << "rank " << r;
      for (std::size_t k = 0; k < plans[0].size(); ++k) {
        const RankStep& s = plans[static_cast<std::size_t>(r)][k];
        EXPECT_GE(s.end - s.begin, 1);
        EXPECT_LE(s.end - s.begin, c.batch);
        EXPECT_EQ(s.global, plans[0][k].global);
        for (std::int64_t p = s.begin; p < s.end; ++p) seen.insert(p);
      }
    }
    // Global steps are contiguous runs in rank order: offsets give each rank's place.
    for (std::size_t k = 0; k < plans[0].size(); ++k) {
      std::int64_t step_begin = plans[0][k].begin, total = 0;
      for (int r = 0; r < c.world; ++r) {
        const RankStep& s = plans[static_cast<std::size_t>(r)][k];
        EXPECT_EQ(s.begin - step_begin, s.offset);
        EXPECT_EQ(s.offset, total);
        total += s.end - s.begin;
      }
      EXPECT_EQ(total, plans[0][k].global);
    }
    const std::int64_t n = c.end - c.begin, global = c.batch * c.world, tail = n % global;
    const std::int64_t expected = tail >= c.world ? n : n - tail;
    EXPECT_EQ(static_cast<std::int64_t>(seen.size()), expected);
    EXPECT_EQ(std::set<std::int64_t>(seen.begin(), seen.end()).size(), seen.size()) << "a position twice";
    for (auto p : seen) {
      EXPECT_GE(p, c.begin);
      EXPECT_LT(p, c.end);
    }
  }
  // 2 ranks x 32 on 60000 samples: 937 full steps and a tail of 32 split 16 + 16, which is
  // exactly what one process with batch 64 does (937 steps of 64 and one of 32).
  auto r1 = plan_rank_steps(0, 60000, 32, 2, 1);
  ASSERT_EQ(r1.size(), 938u);
  EXPECT_EQ(r1.back().begin, 59968 + 16);
  EXPECT_EQ(r1.back().end, 60000);
  EXPECT_EQ(r1.back().global, 32);
  EXPECT_TRUE(plan_rank_steps(0, 100, 8, 2, 2).empty()) << "a rank outside the world";
}

TEST(SyncBook, RanksTrainThenEvaluateEachEpochInLockStep) {
  SyncBook book(1000, 2, 2);
  auto now = std::chrono::steady_clock::now();
  auto a = book.next("worker.0", now);
  ASSERT_EQ(a.kind, WorkBook::Task::train);
  EXPECT_EQ(a.shard.epoch, 1);
  EXPECT_EQ(a.shard.begin, 0);
  EXPECT_EQ(a.shard.end, 1000);
  EXPECT_EQ(book.next("worker.0", now).kind, WorkBook::Task::train) << "asking again repeats the task";
  EXPECT_TRUE(book.complete("worker.0", 1, 0, ShardStats{500, 100.0, 300}, 2.0, now));
  EXPECT_FALSE(book.complete("worker.0", 1, 0, ShardStats{500, 100.0, 300}, 2.0, now)) << "a repeated report";
  auto e = book.next("worker.0", now);
  ASSERT_EQ(e.kind, WorkBook::Task::evaluate);
  EXPECT_EQ(e.epoch, 1);
  EXPECT_TRUE(book.evaluated("worker.0", 1, 0.5, 0.8));
  EXPECT_TRUE(book.take_completed().empty()) << "worker.1 has not trained epoch 1";
  EXPECT_EQ(book.next("worker.1", now).kind, WorkBook::Task::train);
  EXPECT_TRUE(book.complete("worker.1", 1, 0, ShardStats{500, 50.0, 200}, 4.0, now));
  EXPECT_TRUE(book.evaluated("worker.1", 1, 0.5, 0.8));
  auto reports = book.take_completed();
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].samples_done, 1000);
  EXPECT_DOUBLE_EQ(reports[0].loss_sum, 150.0);
  EXPECT_EQ(reports[0].correct, 500);
  EXPECT_DOUBLE_EQ(reports[0].train_seconds, 4.0) << "the slowest rank";
  EXPECT_DOUBLE_EQ(reports[0].test_accuracy, 0.8);
  for (const char* w : {"worker.0", "worker.1"}) {
    ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
    book.complete(w, 2, 0, ShardStats{500, 1, 1}, 1, now);
    ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::evaluate);
    EXPECT_FALSE(book.finished());
    book.evaluated(w, 2, 0.4, 0.9);
  }
  EXPECT_TRUE(book.finished());
  EXPECT_EQ(book.next("worker.0", now).kind, WorkBook::Task::finished);
  EXPECT_EQ(book.take_completed().size(), 1u);
}

// sync.elastic: a rank lost mid-epoch leaves the world; the epoch completes once every survivor
// trained and evaluated it, whether or not the lost one had reported.
TEST(SyncBook, ALostRankLeavesTheWorldAndTheSurvivorsCompleteTheEpoch) {
  SyncBook book(900, 2, 3);
  auto now = std::chrono::steady_clock::now();
  for (const char* w : {"worker.0", "worker.1", "worker.2"}) ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
  book.complete("worker.2", 1, 0, ShardStats{300, 1, 1}, 1, now);  // it reported, then died
  book.complete("worker.0", 1, 0, ShardStats{300, 1, 1}, 1, now);
  book.remove("worker.2", now);
  EXPECT_TRUE(book.take_completed().empty()) << "worker.1 has not trained epoch 1";
  book.complete("worker.1", 1, 0, ShardStats{300, 1, 1}, 1, now);
  book.evaluated("worker.0", 1, 0.5, 0.8);
  EXPECT_TRUE(book.take_completed().empty()) << "worker.1 has not evaluated";
  book.evaluated("worker.1", 1, 0.5, 0.8);
  auto done = book.take_completed();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].samples_done, 900);
  // Epoch 2: the survivors alone; the lost rank is no longer waited for.
  for (const char* w : {"worker.0", "worker.1"}) {
    ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
    book.complete(w, 2, 0, ShardStats{450, 1, 1}, 1, now);
    book.evaluated(w, 2, 0.4, 0.9);
  }
  EXPECT_TRUE(book.finished());
  EXPECT_EQ(book.take_completed().size(), 1u);
  EXPECT_EQ(book.boundary(), 2);
}

// A rank that joins an elastic world starts at the least advanced member's stage and is counted
// in every epoch from then on; training_epoch() says when every rank trains the same epoch (the
// coordinator admits joiners then); pass_evaluation() moves a rank past an evaluation its world
// had done, leaving the epoch's result as the world computed it.
TEST(SyncBook, ARankJoinsTheWorldAndPassesWhatTheWorldDidBeforeIt) {
  SyncBook book(900, 3, 2);
  auto now = std::chrono::steady_clock::now();
  EXPECT_EQ(book.training_epoch(), -1) << "no rank asked yet";
  for (const char* w : {"worker.0", "worker.1"}) ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
  EXPECT_EQ(book.training_epoch(), 1);
  book.complete("worker.0", 1, 0, ShardStats{450, 1, 1}, 1, now);
  EXPECT_EQ(book.training_epoch(), -1) << "worker.0 is past training epoch 1";
  book.complete("worker.1", 1, 0, ShardStats{450, 1, 1}, 1, now);
  book.evaluated("worker.0", 1, 0.5, 0.8);
  book.evaluated("worker.1", 1, 0.5, 0.8);
  ASSERT_EQ(book.take_completed().size(), 1u);
  for (const char* w : {"worker.0", "worker.1"}) ASSERT_EQ(book.next(w, now).kind, WorkBook::Task::train);
  EXPECT_EQ(book.training_epoch(), 2);
  book.add("worker.2");
  auto task = book.next("worker.2", now);
  ASSERT_EQ(task.kind, WorkBook::Task::train);
  EXPECT_EQ(task.shard.epoch, 2) << "the joiner starts where the world stands";
  for (const char* w : {"worker.0", "worker.1", "worker.2"}) book.complete(w, 2, 0, ShardStats{300, 1, 1}, 1, now);
  book.evaluated("worker.0", 2, 0.4, 0.9);
  book.evaluated("worker.1", 2, 0.4, 0.9);
  EXPECT_TRUE(book.take_completed().empty()) << "the joiner is part of the world: its evaluation is waited for";
  EXPECT_FALSE(book.pass_evaluation("worker.2", 1)) << "not its stage";
  EXPECT_TRUE(book.pass_evaluation("worker.2", 2));
  auto done = book.take_completed();
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].samples_done, 900);
  EXPECT_DOUBLE_EQ(done[0].test_accuracy, 0.9) << "a pass leaves the world's result";
  EXPECT_EQ(book.next("worker.2", now).shard.epoch, 3);
}

}  // namespace
}  // namespace shoal

namespace shoal {
namespace {

TEST(RendezvousTable, KeysAreSetReadBackOverwrittenAndBounded) {
  RendezvousTable table(2);
  EXPECT_EQ(table.get("gen1/gloo/rank0"), nullptr);  // not yet: the rank polls again
  EXPECT_TRUE(table.set("gen1/gloo/rank0", "addr0"));
  ASSERT_NE(table.get("gen1/gloo/rank0"), nullptr);
  EXPECT_EQ(*table.get("gen1/gloo/rank0"), "addr0");
  EXPECT_TRUE(table.set("gen1/gloo/rank1", std::string("a\0b", 3)));  // values are bytes
  EXPECT_EQ(table.get("gen1/gloo/rank1")->size(), 3u);
  EXPECT_FALSE(table.set("gen1/gloo/rank2", "x"));  // full: a new key is refused
  EXPECT_EQ(table.get("gen1/gloo/rank2"), nullptr);
  EXPECT_TRUE(table.set("gen1/gloo/rank0", "addr0'"));  // an existing key is overwritten
  EXPECT_EQ(*table.get("gen1/gloo/rank0"), "addr0'");
  EXPECT_EQ(table.size(), 2u);
}

}  // namespace
}  // namespace shoal
