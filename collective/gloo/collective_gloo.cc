#include "collective/gloo/collective_gloo.h"

#include <gloo/allreduce.h>
#include <gloo/allreduce_halving_doubling.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <map>

namespace shoal {
namespace {

std::chrono::milliseconds to_ms(std::chrono::duration<double> d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d);
}

// Gloo's Store on top of ours, under a prefix, with our deadline on every wait.
class StoreAdapter final : public gloo::rendezvous::Store {
 public:
  StoreAdapter(RendezvousStore& store, std::string prefix, std::chrono::duration<double> timeout)
      : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}
  void set(const std::string& key, const std::vector<char>& data) override { store_.set(prefix_ + key, data); }
  std::vector<char> get(const std::string& key) override { return store_.get(prefix_ + key, timeout_); }
  void wait(const std::vector<std::string>& keys) override { wait(keys, to_ms(timeout_)); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const auto& key : keys) store_.get(prefix_ + key, std::min<std::chrono::duration<double>>(timeout, timeout_));
  }

 private:
  RendezvousStore& store_;
  std::string prefix_;
  std::chrono::duration<double> timeout_;
};

// What the calls on the collective's thread use, owned jointly by the collective and each
// call (a call blocked on a dead peer may outlive the collective).
struct GlooState {
  static constexpr std::size_t kSmall = 256 * 1024;  // floats: 1 MiB
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::Context> context;
  // A mesh of its own for the small all-reduces: Gloo's older algorithms and its generic entry
  // point slow each other down badly (10 s per 12 MiB all-reduce, measured) on shared pairs.
  std::shared_ptr<gloo::Context> small_context;
  std::uint32_t tag = 0;
  std::vector<float> scratch = std::vector<float>(kSmall);
  std::map<std::size_t, std::unique_ptr<gloo::Algorithm>> small;

  std::uint32_t next_tag() { return tag++ & 0xffffff; }

  void all_reduce(std::span<float> data) {
    if (data.size() <= kSmall) {
      // Small (batch-norm statistics, evaluation results): latency-bound. Gloo's halving-
      // doubling, built once per size on a fixed scratch buffer, answers in ~0.1 ms where the
      // generic entry point takes ~4 ms (measured with bench/allreduce_bandwidth.cc). It does
      // not notice a closed connection: a dead peer fails it at the world's timeout.
      auto it = small.find(data.size());
      if (it == small.end()) {
        std::vector<float*> ptrs{scratch.data()};
        it = small
                 .emplace(data.size(), std::make_unique<gloo::AllreduceHalvingDoubling<float>>(
                                           small_context, ptrs, static_cast<int>(data.size())))
                 .first;
      }
      std::copy(data.begin(), data.end(), scratch.begin());
      it->second->run();
      std::copy(scratch.begin(), scratch.begin() + static_cast<std::ptrdiff_t>(data.size()), data.begin());
      return;
    }
    gloo::AllreduceOptions opts(context);
    opts.setOutput(data.data(), data.size());
    opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(next_tag());
    gloo::allreduce(opts);
  }
  void broadcast(std::span<float> data, int root) {
    gloo::BroadcastOptions opts(context);
    opts.setOutput(data.data(), data.size());
    opts.setRoot(root);
    opts.setTag(next_tag());
    gloo::broadcast(opts);
  }
};

class GlooCollective final : public ThreadedCollective {
 public:
  GlooCollective(RendezvousStore& store, const WorldInfo& world, const GlooOptions& options)
      : world_(world), state_(std::make_shared<GlooState>()) {
    gloo::transport::tcp::attr attr;
    if (!options.interface.empty())
      attr.iface = options.interface;
    else
      attr.hostname = options.hostname;
    where_ = options.interface.empty() ? options.hostname : options.interface;
    try {
      state_->device = gloo::transport::tcp::CreateDevice(attr);
      for (const char* mesh : {"large/", "small/"}) {
        auto context = std::make_shared<gloo::rendezvous::Context>(world.rank, world.size);
        context->setTimeout(to_ms(options.timeout));
        StoreAdapter adapter(store, options.prefix + mesh, options.timeout);
        context->connectFullMesh(adapter, state_->device);
        (mesh[0] == 'l' ? state_->context : state_->small_context) = context;
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      throw CollectiveError("forming the gloo world (rank " + std::to_string(world.rank) + " of " +
                            std::to_string(world.size) + ", bound to " + where_ + ") failed: " + e.what());
    }
    start();
  }
  ~GlooCollective() override { stop(); }

  const WorldInfo& world() const override { return world_; }
  std::string describe() const override {
    return "gloo (tcp on " + where_ + ", rank " + std::to_string(world_.rank) + " of " + std::to_string(world_.size) +
           ")";
  }

 protected:
  Call all_reduce_call(std::span<float> data, ReduceOp op) override {
    return [state = state_, size = world_.size, data, op] {
      if (data.empty()) return;
      state->all_reduce(data);
      if (op == ReduceOp::average && size > 1) {
        const float inv = 1.f / static_cast<float>(size);
        for (float& v : data) v *= inv;
      }
    };
  }
  Call broadcast_call(std::span<float> data, int root) override {
    return [state = state_, data, root] {
      if (!data.empty()) state->broadcast(data, root);
    };
  }
  void interrupt() override {
    // Makes a call blocked on a peer fail at once instead of at its timeout.
    if (state_->context) state_->context->closeConnections();
    if (state_->small_context) state_->small_context->closeConnections();
  }

 private:
  WorldInfo world_;
  std::string where_;
  std::shared_ptr<GlooState> state_;
};

}  // namespace

std::unique_ptr<Collective> make_gloo_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const GlooOptions& options) {
  SHOAL_REQUIRE(world.size >= 1 && world.rank >= 0 && world.rank < world.size, InternalError,
                "rank " << world.rank << " outside a world of " << world.size);
  return std::make_unique<GlooCollective>(store, world, options);
}

}  // namespace shoal
