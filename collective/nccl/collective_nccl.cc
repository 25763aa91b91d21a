#include "collective/nccl/collective_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "compute/cuda/check.h"

namespace shoal {
namespace {

using cuda::check_cuda;
using cuda::check_nccl;

class NcclCollective final : public Collective {
 public:
  NcclCollective(RendezvousStore& store, const WorldInfo& world, const std::string& prefix,
                 std::chrono::duration<double> timeout, NcclPlacement placement)
      : world_(world), device_(placement.device), producer_(static_cast<cudaStream_t>(placement.producer_stream)) {
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    SHOAL_REQUIRE(devices > 0, DeviceError, "sync.backend = nccl but no GPU is visible");
    SHOAL_REQUIRE(device_ >= 0 && device_ < devices, DeviceError,
                  "sync.backend = nccl on GPU " << device_ << ", but " << devices << " GPU(s) are visible");
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
    // A non-blocking communicator, so forming the world has a deadline: a rank that never
    // arrives ends the wait instead of holding every other rank forever.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
    try {
      settle(ncclCommInitRankConfig(&comm_, world.size, id, world.rank, &config), "ncclCommInitRankConfig", deadline);
    } catch (const Error& e) {
      // Most often a peer that died or never came while the world formed: the job's verdict
      // names it.
      if (comm_ != nullptr) ncclCommAbort(comm_);
      throw CollectiveError(std::string(e.what()) + " (forming the NCCL world of " + std::to_string(world.size) +
                            " ranks)");
    }
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    check_cuda(cudaEventCreateWithFlags(&produced_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
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
    cudaEventDestroy(produced_);
    if (scratch_ != nullptr) cudaFree(scratch_);
    cudaStreamDestroy(stream_);
  }

  const WorldInfo& world() const override { return world_; }
  std::string describe() const override {
    return "nccl (GPU " + std::to_string(device_) + ", rank " + std::to_string(world_.rank) + " of " +
           std::to_string(world_.size) + ")";
  }

  WorkHandle all_reduce(std::span<float> data, ReduceOp op, std::string what) override {
    return launch(std::move(what), data, [&](float* buffer) {
      settle(ncclAllReduce(buffer, buffer, data.size(), ncclFloat, op == ReduceOp::sum ? ncclSum : ncclAvg, comm_,
                           stream_),
             "ncclAllReduce", enqueue_deadline());
    });
  }
  WorkHandle broadcast(std::span<float> data, int root, std::string what) override {
    return launch(std::move(what), data, [&](float* buffer) {
      settle(ncclBroadcast(buffer, buffer, data.size(), ncclFloat, root, comm_, stream_), "ncclBroadcast",
             enqueue_deadline());
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
  // A call on a non-blocking communicator may return ncclInProgress: the next call must wait
  // until the communicator says it is done (or failed), within the deadline.
  void settle(ncclResult_t result, const char* call, std::chrono::steady_clock::time_point deadline) {
    while (result == ncclInProgress) {
      SHOAL_REQUIRE(std::chrono::steady_clock::now() < deadline, TimeoutError,
                    call << " did not complete before its deadline");
      std::this_thread::sleep_for(std::chrono::microseconds(20));
      check_nccl(ncclCommGetAsyncError(comm_, &result), "ncclCommGetAsyncError");
    }
    check_nccl(result, call);
  }
  // Enqueueing an operation is local work; a stuck enqueue means a broken communicator.
  static std::chrono::steady_clock::time_point enqueue_deadline() {
    return std::chrono::steady_clock::now() + std::chrono::seconds(60);
  }
  static bool in_host_memory(const void* p) {
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, p) != cudaSuccess) {
      cudaGetLastError();
      return true;
    }
    return attributes.type == cudaMemoryTypeUnregistered || attributes.type == cudaMemoryTypeHost;
  }
  // A device buffer for host spans, grown as needed (evaluation sums: a few floats, rarely).
  float* scratch(std::size_t count) {
    if (count > scratch_count_) {
      check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      if (scratch_ != nullptr) check_cuda(cudaFree(scratch_), "cudaFree");
      scratch_ = nullptr;
      check_cuda(cudaMalloc(reinterpret_cast<void**>(&scratch_), count * sizeof(float)), "cudaMalloc");
      scratch_count_ = count;
    }
    return scratch_;
  }
  // Enqueues one operation on the communication stream after the producer's work so far; a
  // host span is copied to the device before and back after it.
  template <typename Enqueue>
  WorkHandle launch(std::string what, std::span<float> data, Enqueue enqueue) {
    auto work = std::make_shared<Work>(std::move(what));
    std::lock_guard lock(mutex_);
    if (aborted_) {
      work->abort(why_);
      return work;
    }
    try {
      check_cuda(cudaSetDevice(device_), "cudaSetDevice");
      if (producer_ != nullptr) {
        check_cuda(cudaEventRecord(produced_, producer_), "cudaEventRecord");
        check_cuda(cudaStreamWaitEvent(stream_, produced_, 0), "cudaStreamWaitEvent");
      }
      const std::size_t bytes = data.size() * sizeof(float);
      if (!data.empty() && in_host_memory(data.data())) {
        float* device = scratch(data.size());
        check_cuda(cudaMemcpyAsync(device, data.data(), bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
        enqueue(device);
        check_cuda(cudaMemcpyAsync(data.data(), device, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
      } else {
        enqueue(data.data());
      }
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
    if (cudaSetDevice(device_) != cudaSuccess) {
      cudaGetLastError();
      abort("the NCCL watcher thread could not select GPU " + std::to_string(device_));
    }
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
            failure =
                std::make_exception_ptr(CollectiveError(std::string("NCCL failed: ") + ncclGetErrorString(async)));
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
  cudaStream_t producer_ = nullptr;
  cudaEvent_t produced_ = nullptr;
  float* scratch_ = nullptr;
  std::size_t scratch_count_ = 0;
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

namespace nccl {
std::unique_ptr<Collective> make_collective(RendezvousStore& store, const WorldInfo& world, const std::string& prefix,
                                            std::chrono::duration<double> timeout, const NcclPlacement& placement) {
  return std::make_unique<NcclCollective>(store, world, prefix, timeout, placement);
}
}  // namespace nccl

}  // namespace shoal
