#include "core/cuda/collective_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

namespace shoal {
namespace {

void check_cuda(cudaError_t code, const char* call) {
  if (code != cudaSuccess) throw CollectiveError(std::string(call) + " failed: " + cudaGetErrorString(code));
}
void check_nccl(ncclResult_t code, const char* call) {
  if (code != ncclSuccess) throw CollectiveError(std::string(call) + " failed: " + ncclGetErrorString(code));
}

class NcclCollective final : public Collective {
 public:
  NcclCollective(RendezvousStore& store, const WorldInfo& world, const std::string& prefix,
                 std::chrono::duration<double> timeout)
      : world_(world) {
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    SHOAL_REQUIRE(devices > 0, DeviceError, "sync.backend = nccl but no GPU is visible");
    device_ = world.local_rank % devices;
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    ncclUniqueId id;
    const std::string key = prefix + "nccl-unique-id";
    if (world.rank == 0) {
      check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
      store.set(key, std::vector<char>(reinterpret_cast<char*>(&id), reinterpret_cast<char*>(&id) + sizeof(id)));
    } else {
      std::vector<char> bytes = store.get(key, timeout);
      SHOAL_REQUIRE(bytes.size() == sizeof(id), ProtocolError,
                    "the NCCL unique id in the store has " << bytes.size() << " bytes, expected " << sizeof(id));
      std::memcpy(&id, bytes.data(), sizeof(id));
    }
    check_nccl(ncclCommInitRank(&comm_, world.size, id, world.rank), "ncclCommInitRank");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    watcher_ = std::thread(&NcclCollective::watch, this);
  }
  ~NcclCollective() override {
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
    }
    if (watcher_.joinable()) watcher_.join();
    if (!aborted_) {
      cudaStreamSynchronize(stream_);
      ncclCommDestroy(comm_);
    }
    cudaStreamDestroy(stream_);
  }

  const WorldInfo& world() const override { return world_; }
  std::string describe() const override {
    return "nccl (GPU " + std::to_string(device_) + ", rank " + std::to_string(world_.rank) + " of " +
           std::to_string(world_.size) + ")";
  }

  WorkHandle all_reduce(std::span<float> data, ReduceOp op, std::string what) override {
    return launch(std::move(what), [&] {
      check_nccl(ncclAllReduce(data.data(), data.data(), data.size(), ncclFloat, op == ReduceOp::sum ? ncclSum : ncclAvg,
                               comm_, stream_),
                 "ncclAllReduce");
    });
  }
  WorkHandle broadcast(std::span<float> data, int root, std::string what) override {
    return launch(std::move(what), [&] {
      check_nccl(ncclBroadcast(data.data(), data.data(), data.size(), ncclFloat, root, comm_, stream_),
                 "ncclBroadcast");
    });
  }
  void abort(const std::string& why) override {
    std::deque<Pending> pending;
    {
      std::lock_guard lock(mutex_);
      if (aborted_) return;
      aborted_ = true;
      why_ = why;
      pending.swap(pending_);
    }
    ncclCommAbort(comm_);
    for (auto& p : pending) {
      p.work->abort(why);
      cudaEventDestroy(p.done);
    }
  }

 private:
  struct Pending {
    WorkHandle work;
    cudaEvent_t done;
  };
  template <typename Enqueue>
  WorkHandle launch(std::string what, Enqueue enqueue) {
    auto work = std::make_shared<Work>(std::move(what));
    std::lock_guard lock(mutex_);
    if (aborted_) {
      work->abort(why_);
      return work;
    }
    try {
      check_cuda(cudaSetDevice(device_), "cudaSetDevice");
      enqueue();
      cudaEvent_t done;
      check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
      check_cuda(cudaEventRecord(done, stream_), "cudaEventRecord");
      pending_.push_back(Pending{work, done});
    } catch (...) {
      work->finish(std::current_exception());
    }
    return work;
  }
  // Completes handles in order as their events fire; fails everything on an NCCL error.
  void watch() {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    while (true) {
      std::optional<Pending> ready;
      std::exception_ptr failure;
      {
        std::lock_guard lock(mutex_);
        if (quit_ && pending_.empty()) return;
        if (!pending_.empty()) {
          cudaError_t state = cudaEventQuery(pending_.front().done);
          ncclResult_t async = ncclSuccess;
          ncclCommGetAsyncError(comm_, &async);
          if (async != ncclSuccess && async != ncclInProgress) {
            failure = std::make_exception_ptr(
                CollectiveError(std::string("NCCL failed: ") + ncclGetErrorString(async)));
          } else if (state == cudaSuccess) {
            ready = pending_.front();
            pending_.pop_front();
          } else if (state != cudaErrorNotReady) {
            failure = std::make_exception_ptr(
                CollectiveError(std::string("a CUDA error during a collective: ") + cudaGetErrorString(state)));
          }
        }
      }
      if (failure) {
        abort(failure_of(failure).message);
        continue;
      }
      if (ready) {
        cudaEventDestroy(ready->done);
        ready->work->finish();
        continue;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  WorldInfo world_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  std::mutex mutex_;
  std::deque<Pending> pending_;
  bool quit_ = false;
  std::atomic<bool> aborted_{false};
  std::string why_;
  std::thread watcher_;
};

}  // namespace

std::unique_ptr<Collective> make_nccl_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const std::string& prefix, std::chrono::duration<double> timeout) {
  return std::make_unique<NcclCollective>(store, world, prefix, timeout);
}

}  // namespace shoal
