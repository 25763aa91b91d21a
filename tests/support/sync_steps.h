// Trains a few global steps of a sync job in this process: as one rank of a world (its part of
// every global step, through SyncAllReduceStrategy) or alone with the whole global batch
// (LocalStrategy). Equal results are the definition of correct data parallelism; the
// equivalence tests (in-process Gloo, and MPI under mpirun) compare the two.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "collective/collective.h"

namespace shoal {

struct SyncRun {
  std::string model = "cnn";
  bool sync_batch_norm = false;
  int steps = 50;
  int batch = 32;  // per rank and micro-batch; alone: batch * world * accumulate
  int accumulate = 1;  // train.accumulate of the ranks: micro-batches per step
  int world = 2;
  std::uint64_t seed = 1;
  float lr = 0.01f;                      // SGD, momentum 0.9
  std::size_t bucket_bytes = 256 << 10;  // small, so several buckets are in flight at once
};

// Parameters then buffers after the run. `collective` null: alone (with sync batch norm: its
// arithmetic in a world of one, which tests/models/gradient_check_test.cc shows equal to the
// backend's batch norm).
std::vector<float> train_sync_steps(const SyncRun& run, Collective* collective);

// Largest |a - b| / (1 + |b|) over the elements.
double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b);
// ||a - b|| / ||b||.
double l2_relative_difference(const std::vector<float>& a, const std::vector<float>& b);

// Whether a rank's parameters after `run` equal those of one process with the whole batch.
//
// The two add the same terms in another order (each rank's GEMM sums its samples and the
// all-reduce adds the ranks' sums; alone, one GEMM sums them all), so float32 rounding differs
// by ~1e-7 per step. How far that grows in 50 steps depends on the model: `cnn` stays near
// 1e-5, but batch norm followed by ReLU and max pooling is chaotic — a value on either side of
// zero routes a gradient elsewhere — so for `cnn_bn` the yardstick is measured in the same
// run: two single-process runs whose only difference is batch norm's rounding (oneDNN's
// kernel vs the synchronised arithmetic). The ranks may differ from one process by at most 4x
// that, plus 1e-5. A real bug (a missing average, a bucket left out, a rank on other data)
// differs by 1e-2 or more; the tests also check that a run one step short fails the bound.
struct Equivalence {
  double difference = 0;  // l2 relative
  double tolerance = 0;
  double noise_floor = 0;  // cnn_bn: measured; cnn: fixed
  bool ok() const { return difference <= tolerance; }
};
Equivalence check_equivalence(const SyncRun& run, const std::vector<float>& rank_params);

}  // namespace shoal
