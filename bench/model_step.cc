// Training steps of a zoo model (or a model file) on one random batch, for
// bench/model_throughput.py beside PyTorch: forward, softmax cross-entropy, backward and an SGD
// step with momentum through the same LocalStrategy `shoal train` uses; no data loading on
// either side. Prints one JSON line: {"samples_per_second": ..., "seconds": ..., "steps": ...}.
//
//   shoal_model_step MODEL SIZE BATCH THREADS [STEPS] [WARMUP]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_table.h"
#include "compute/devices/devices.h"
#include "compute/rng.h"
#include "models/model_file.h"
#include "worker/strategy.h"

namespace {
const char* kUsage = "usage: shoal_model_step MODEL SIZE BATCH THREADS [STEPS] [WARMUP]";
}

int main(int argc, char** argv) {
  using namespace shoal;
  try {
    if (argc < 5) {
      std::fprintf(stderr, "%s\n", kUsage);
      return 2;
    }
    const std::string model_name = argv[1];
    const int size = bench::positive_int("SIZE", argv[2], kUsage);
    const int batch = bench::positive_int("BATCH", argv[3], kUsage);
    const int threads = bench::positive_int("THREADS", argv[4], kUsage);
    const int steps = argc > 5 ? bench::positive_int("STEPS", argv[5], kUsage) : 20;
    const int warmup = argc > 6 ? bench::positive_int("WARMUP", argv[6], kUsage) : 3;
    auto backend = make_backend(BackendOptions{Device::cpu(), threads});
    Backend& b = *backend;
    auto model = build_model(model_name, Shape{3, size, size}, 10);
    model->build(b, 1);
    OptimizerConfig opt;
    opt.lr = 0.01f;
    opt.momentum = 0.9f;
    LocalStrategy sgd(b, *model, Optimizer(opt));
    Rng rng(7);
    std::vector<float> host(static_cast<std::size_t>(batch) * 3 * size * size);
    for (auto& v : host) v = static_cast<float>(rng.normal());
    std::vector<std::int32_t> labels(static_cast<std::size_t>(batch));
    for (auto& l : labels) l = static_cast<std::int32_t>(rng.below(10));
    Tensor x = b.allocate(Shape{batch, 3, size, size}), y = b.allocate(Shape{batch}, DType::i32);
    b.copy_from_host(host.data(), x);
    b.copy_from_host(labels.data(), y);
    Tensor dz;
    auto step = [&](std::int64_t i) {
      LayerContext ctx{b, true, static_cast<std::uint64_t>(i)};
      const Tensor& z = model->forward(ctx, x);
      if (!dz.defined()) dz = b.allocate(z.shape());
      b.softmax_cross_entropy(z, y, &dz, 1.f / static_cast<float>(batch));
      model->backward(ctx, dz);
      sgd.end_step(*model, i, opt.lr);
    };
    for (int i = 0; i < warmup; ++i) step(i);
    b.synchronize();
    const auto start = bench::Clock::now();
    for (int i = 0; i < steps; ++i) step(warmup + i);
    b.synchronize();
    const double seconds = bench::seconds_since(start);
    std::printf("{\"samples_per_second\": %.2f, \"seconds\": %.4f, \"steps\": %d, \"parameters\": %lld}\n",
                static_cast<double>(steps) * batch / seconds, seconds, steps,
                static_cast<long long>(model->params().parameter_count()));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shoal_model_step: %s\n", e.what());
    return 2;
  }
}
