// Data parallelism is correct when N ranks with batch B end where one process with batch N*B
// ends. Two ranks x 32 against one process x 64, 50 steps of SGD with momentum on
// Fashion-MNIST, over a real Gloo world (TCP on loopback, ranks as threads); the MPI backend
// is checked the same way under mpirun (sync_process_test.cc).
//
// Tolerance: see check_equivalence in tests/support/sync_steps.h.
#include <gtest/gtest.h>

#include <map>
#include <mutex>
#include <thread>

#include "collective/gloo/collective_gloo.h"
#include "tests/support/memory_store.h"
#include "tests/support/sync_steps.h"

namespace shoal {
namespace {

using testing::MemoryStore;

// Every rank's parameters after the run, over Gloo.
std::vector<std::vector<float>> run_gloo(const SyncRun& run) {
  MemoryStore store;
  std::vector<std::vector<float>> out(static_cast<std::size_t>(run.world));
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(run.world));
  std::vector<std::thread> threads;
  for (int r = 0; r < run.world; ++r)
    threads.emplace_back([&, r] {
      try {
        GlooOptions o;
        o.prefix = "eq/";
        auto c = make_gloo_collective(store, WorldInfo{r, run.world, r}, o);
        out[static_cast<std::size_t>(r)] = train_sync_steps(run, c.get());
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

void expect_equivalent(const SyncRun& run) {
  auto ranks = run_gloo(run);
  for (int r = 0; r < run.world; ++r)
    EXPECT_EQ(ranks[static_cast<std::size_t>(r)], ranks[0]) << "rank " << r << " differs from rank 0";
  Equivalence e = check_equivalence(run, ranks[0]);
  EXPECT_TRUE(e.ok()) << run.model << ": 2 ranks x " << run.batch << " x " << run.accumulate << " vs 1 x " << 2 * run.batch * run.accumulate << " differ by "
                      << e.difference << " (l2 relative), over the tolerance " << e.tolerance;
  std::printf("%s%s over gloo, %d steps: difference %.3g, tolerance %.3g (noise floor %.3g)\n", run.model.c_str(),
              run.sync_batch_norm ? " (sync batch norm)" : "", run.steps, e.difference, e.tolerance, e.noise_floor);
  // The check can fail: a run one step short is far outside the tolerance.
  SyncRun shorter = run;
  shorter.steps = run.steps - 1;
  std::vector<float> short_params = train_sync_steps(shorter, nullptr);
  EXPECT_GT(l2_relative_difference(short_params, train_sync_steps(run, nullptr)), 10 * e.tolerance);
}

TEST(SyncEquivalence, CnnTwoRanksOfBatch32EqualOneOfBatch64OverGloo) {
  SyncRun run;
  run.model = "cnn";
  expect_equivalent(run);
}

// train.accumulate = 2 on each rank: 2 ranks x 2 micro-batches of 16 equal one process x 64,
// with one all-reduce per step (the strategy's clock counts steps: 50, not 100).
TEST(SyncEquivalence, CnnTwoRanksAccumulatingTwoMicroBatchesOf16EqualOneOf64OverGloo) {
  SyncRun run;
  run.model = "cnn";
  run.batch = 16;
  run.accumulate = 2;
  expect_equivalent(run);
}

TEST(SyncEquivalence, CnnBnWithSyncBatchNormOverGloo) {
  SyncRun run;
  run.model = "cnn_bn";
  run.sync_batch_norm = true;
  run.lr = 0.002f;  // keeps batch norm's float32 chaos (the noise floor) low, so the bound is sharp
  expect_equivalent(run);
}

}  // namespace
}  // namespace shoal
