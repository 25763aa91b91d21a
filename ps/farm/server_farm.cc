#include "ps/farm/server_farm.h"
#include "compute/devices/devices.h"

#include <utility>

#include "coordinator/partitioner.h"

namespace shoal {

ServerFarm::ServerFarm(int servers, std::int64_t elements, std::int64_t chunk_elements, float initial,
                       const std::string& worker, const ServerOptions& options)
    : ServerFarm(servers, elements, chunk_elements, initial, std::vector<std::string>{worker}, options) {}

ServerFarm::ServerFarm(int servers, std::int64_t elements, std::int64_t chunk_elements, float initial,
                       std::vector<std::string> workers, const ServerOptions& options) {
  std::vector<ServerRange> ranges;
  for (int i = 0; i < servers; ++i) {
    auto s = std::make_unique<Slot>();
    s->backend = make_backend(BackendOptions{Device::cpu(), 1});
    s->server =
        std::make_unique<ParameterServer>(s->context, "tcp://127.0.0.1:0", *s->backend, Logger("ps", LogLevel::warn));
    ranges.push_back(ServerRange{"ps." + std::to_string(i), s->server->endpoint(), 0, 0});
    slots_.push_back(std::move(s));
  }
  table_ = make_partition(elements, chunk_elements, ranges);
  table_.live_workers = std::move(workers);
  std::vector<float> values(static_cast<std::size_t>(elements), initial);
  for (int i = 0; i < servers; ++i) {
    Slot* s = slots_[static_cast<std::size_t>(i)].get();
    s->server->start(ranges[static_cast<std::size_t>(i)].id, table_, static_cast<std::size_t>(i), values.data(),
                     options);
    s->thread = std::thread([this, s] {
      while (!stop_) s->server->serve(std::chrono::milliseconds(5));
    });
  }
}

ServerFarm::~ServerFarm() {
  stop_ = true;
  for (auto& s : slots_) s->thread.join();
}

}  // namespace shoal
