// The Collective seam over real Gloo worlds (TCP on loopback, ranks as threads, formed through a
// store): results, ordering of operations in flight, handles (wait with a deadline, abort), and
// what the survivors see when a rank goes away. The MPI backend runs under mpirun in
// tests/sync/sync_process_test.cc.
#include "collective/collective.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include "collective/gloo/collective_gloo.h"
#include "tests/support/memory_store.h"

namespace shoal {
namespace {

using namespace std::chrono_literals;

using testing::MemoryStore;

// Forms a Gloo world of `n` ranks (each in its own thread, as they must join together).
std::vector<std::unique_ptr<Collective>> gloo_world(MemoryStore& store, int n, double timeout_s = 20,
                                                    const std::string& prefix = "t/") {
  std::vector<std::unique_ptr<Collective>> world(static_cast<std::size_t>(n));
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        GlooOptions o;
        o.hostname = "127.0.0.1";
        o.prefix = prefix;
        o.timeout = std::chrono::duration<double>(timeout_s);
        world[static_cast<std::size_t>(r)] = make_gloo_collective(store, WorldInfo{r, n, r}, o);
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return world;
}

// Runs f(rank) on every rank at once.
template <typename F>
void on_every_rank(int n, F f) {
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { f(r); });
  for (auto& t : threads) t.join();
}

TEST(GlooCollective, AllReduceSumAndAverageOfManySizes) {
  MemoryStore store;
  const int n = 3;
  auto world = gloo_world(store, n);
  EXPECT_EQ(world[1]->rank(), 1);
  EXPECT_EQ(world[1]->size(), 3);
  EXPECT_NE(world[0]->describe().find("gloo"), std::string::npos);
  for (std::size_t count : {std::size_t{1}, std::size_t{7}, std::size_t{1000}, std::size_t{3} << 20}) {
    std::vector<std::vector<float>> sums(n), averages(n);
    on_every_rank(n, [&](int r) {
      auto& s = sums[static_cast<std::size_t>(r)];
      auto& a = averages[static_cast<std::size_t>(r)];
      s.resize(count);
      a.resize(count);
      for (std::size_t i = 0; i < count; ++i) s[i] = a[i] = static_cast<float>((i % 97) * (r + 1));
      auto h1 = world[static_cast<std::size_t>(r)]->all_reduce(s, ReduceOp::sum, "sum");
      auto h2 = world[static_cast<std::size_t>(r)]->all_reduce(a, ReduceOp::average, "average");
      h1->wait(20s);
      h2->wait(20s);
    });
    for (int r = 0; r < n; ++r)
      for (std::size_t i = 0; i < count; i += 1 + count / 50) {
        const float base = static_cast<float>(i % 97);
        ASSERT_EQ(sums[static_cast<std::size_t>(r)][i], base * 6) << "count " << count << " rank " << r << " i " << i;
        ASSERT_FLOAT_EQ(averages[static_cast<std::size_t>(r)][i], base * 2) << "count " << count << " rank " << r;
      }
  }
}

TEST(GlooCollective, BroadcastFromAnyRootAndOrderOfOperationsInFlight) {
  MemoryStore store;
  const int n = 2;
  auto world = gloo_world(store, n);
  std::vector<std::vector<float>> buffers(n, std::vector<float>(1000));
  std::vector<std::vector<float>> steps(n, std::vector<float>(8));
  on_every_rank(n, [&](int r) {
    auto& c = *world[static_cast<std::size_t>(r)];
    auto& b = buffers[static_cast<std::size_t>(r)];
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = r == 1 ? static_cast<float>(i) : -1.f;
    // Issued back to back, finished in order: a broadcast, then eight all-reduces.
    std::vector<WorkHandle> handles{c.broadcast(b, 1, "broadcast")};
    auto& s = steps[static_cast<std::size_t>(r)];
    for (std::size_t k = 0; k < s.size(); ++k) {
      s[k] = static_cast<float>(k + r);
      handles.push_back(c.all_reduce(std::span<float>(&s[k], 1), ReduceOp::sum, "step " + std::to_string(k)));
    }
    for (auto& h : handles) h->wait(20s);
    for (auto& h : handles) EXPECT_TRUE(h->done());
  });
  for (int r = 0; r < n; ++r) {
    for (std::size_t i = 0; i < 1000; ++i) ASSERT_EQ(buffers[static_cast<std::size_t>(r)][i], static_cast<float>(i));
    for (std::size_t k = 0; k < 8; ++k) EXPECT_EQ(steps[static_cast<std::size_t>(r)][k], static_cast<float>(2 * k + 1));
  }
}

TEST(GlooCollective, WaitHasADeadlineWhenAPeerDoesNotTakePart) {
  MemoryStore store;
  auto world = gloo_world(store, 2);
  std::vector<float> data(10, 1.f);
  // Rank 1 never issues its part.
  auto h = world[0]->all_reduce(data, ReduceOp::sum, "all-reduce nobody joins");
  auto started = std::chrono::steady_clock::now();
  EXPECT_FALSE(h->wait_until(started + 200ms));
  try {
    h->wait(std::chrono::duration<double>(0.3));
    FAIL() << "no timeout";
  } catch (const TimeoutError& e) {
    EXPECT_NE(std::string(e.what()).find("all-reduce nobody joins"), std::string::npos) << e.what();
  }
  int watched = 0;
  auto watch = [&] {
    if (++watched == 3) throw ProtocolError("the watch ends the wait");
  };
  EXPECT_THROW(h->wait(std::chrono::duration<double>(5), watch), ProtocolError);
  EXPECT_EQ(watched, 3);
  // Abort: the handle fails at once, and so does anything issued later.
  world[0]->abort("test over");
  EXPECT_THROW(h->wait(std::chrono::duration<double>(1)), CollectiveError);
  auto later = world[0]->all_reduce(data, ReduceOp::sum, "after abort");
  EXPECT_TRUE(later->done());
  EXPECT_THROW(later->wait(std::chrono::duration<double>(1)), CollectiveError);
  // Rank 1 leaves too, so rank 0's thread (interrupted by the abort) is not waited for.
  world[1]->abort("test over");
}

// Rank 2 of 3 goes away (its connections close, as when its process dies). Large all-reduces
// (Gloo's generic algorithm) fail at once on the closed connections; small ones (halving-
// doubling, which does not watch connections) fail at the world's timeout. In a job the
// coordinator's verdict (a missed heartbeat) usually ends the wait before either.
void expect_survivors_fail(std::size_t floats, double world_timeout, double within) {
  MemoryStore store;
  const int n = 3;
  auto world = gloo_world(store, n, world_timeout);
  world[2]->abort("rank 2 went away");
  world[2].reset();
  std::vector<std::exception_ptr> errors(2);
  auto started = std::chrono::steady_clock::now();
  on_every_rank(2, [&](int r) {
    std::vector<float> data(floats, 1.f);
    try {
      world[static_cast<std::size_t>(r)]
          ->all_reduce(data, ReduceOp::sum, "all-reduce")
          ->wait(std::chrono::duration<double>(25));
    } catch (...) {
      errors[static_cast<std::size_t>(r)] = std::current_exception();
    }
  });
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(errors[static_cast<std::size_t>(r)]) << "rank " << r << " did not fail";
    Failure f = failure_of(errors[static_cast<std::size_t>(r)]);
    EXPECT_NE(f.message.find("all-reduce"), std::string::npos) << f.message;
  }
  EXPECT_LT(seconds, within) << floats << " floats: the survivors waited too long";
  for (auto& c : world)
    if (c) c->abort("test over");
}

TEST(GlooCollective, SurvivorsFailPromptlyWhenARankGoesAway) { expect_survivors_fail(std::size_t{1} << 20, 30, 20); }

TEST(GlooCollective, SurvivorsOfASmallAllReduceFailAtTheWorldTimeout) { expect_survivors_fail(1000, 2, 12); }

TEST(GlooCollective, FormingAWorldTimesOutNamingTheMissingKey) {
  MemoryStore store;
  GlooOptions o;
  o.hostname = "127.0.0.1";
  o.prefix = "lonely/";
  o.timeout = std::chrono::duration<double>(0.5);
  // Rank 0 of 2 alone: rank 1 never publishes its address.
  try {
    make_gloo_collective(store, WorldInfo{0, 2, 0}, o);
    FAIL() << "formed a world alone";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == ExitCode::timeout || e.code() == ExitCode::peer_lost) << e.what();
  }
}

TEST(Work, FinishOnceAbortWins) {
  Work w("op");
  EXPECT_FALSE(w.done());
  w.abort("first");
  w.finish();  // too late: the abort is what waiters saw
  EXPECT_TRUE(w.done());
  EXPECT_THROW(w.wait(std::chrono::duration<double>(0.1)), CollectiveError);
  Work ok("op2");
  std::thread t([&] { ok.finish(); });
  ok.wait(std::chrono::duration<double>(5));
  t.join();
  EXPECT_FALSE(ok.error());
}

}  // namespace
}  // namespace shoal
