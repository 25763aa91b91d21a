// The input pipeline alone: decoded and augmented images per second into ready batches, from an
// image folder through Shoal's BatchLoader (no model). bench/input_pipeline.py runs it beside
// torchvision's ImageFolder + DataLoader with the same transforms and workers.
//
//   shoal_input_bench DIR THREADS [BATCHES=40] [BATCH=64] [SIZE=224]
//
// Prints one JSON line: {"threads": N, "images": n, "seconds": s, "images_per_second": r}. The
// first 3 batches (threads starting, caches warming) are not timed, as on the torchvision side.
#include <chrono>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "base/log.h"
#include "data/loader.h"
#include "data/source.h"

int main(int argc, char** argv) {
  using namespace shoal;
  if (argc < 3) {
    std::fprintf(stderr, "usage: shoal_input_bench DIR THREADS [BATCHES] [BATCH] [SIZE]\n");
    return 2;
  }
  try {
    DataSpec spec;
    spec.format = DataFormat::folder;
    spec.dir = argv[1];
    spec.threads = std::stoll(argv[2]);
    const std::int64_t batches = argc > 3 ? std::stoll(argv[3]) : 40, batch = argc > 4 ? std::stoll(argv[4]) : 64;
    spec.size = argc > 5 ? std::stoll(argv[5]) : 224;
    spec.channels = 3;
    spec.train_crop = TrainCrop::random_resized;
    spec.flip = true;
    spec.mean = {0.485, 0.456, 0.406};  // torchvision's ImageNet constants, as on the peer's side
    spec.stddev = {0.229, 0.224, 0.225};
    DataSources data = open_data(spec, Logger("bench", LogLevel::warn));
    const std::vector<std::int64_t> order = data.train->epoch_order(1, 1);
    constexpr std::int64_t kWarmup = 3;
    SHOAL_REQUIRE((batches + kWarmup) * batch <= data.train->count(), ConfigError,
                  "the folder has " << data.train->count() << " images, " << (batches + kWarmup) * batch << " needed");
    BatchLoader loader(spec.threads, spec.prefetch);
    std::vector<BatchLoader::Request> requests;
    for (std::int64_t b = 0; b < batches + kWarmup; ++b)
      requests.push_back({data.train.get(), std::span<const std::int64_t>(order.data() + b * batch, static_cast<std::size_t>(batch)),
                          SampleContext{true, 1, 1}});
    loader.start(std::move(requests));
    for (std::int64_t b = 0; b < kWarmup; ++b) loader.next();
    const auto start = std::chrono::steady_clock::now();
    std::int64_t images = 0;
    for (std::int64_t b = 0; b < batches; ++b) images += loader.next().count;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"threads\": %lld, \"images\": %lld, \"seconds\": %.4f, \"images_per_second\": %.1f}\n",
                static_cast<long long>(spec.threads), static_cast<long long>(images), seconds,
                static_cast<double>(images) / seconds);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shoal_input_bench: %s\n", e.what());
    return 1;
  }
}
