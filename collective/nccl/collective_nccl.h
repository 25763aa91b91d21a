// NCCL: all-reduce and broadcast of GPU buffers on a stream of their own. The communicator is
// made from an ncclUniqueId that rank 0 creates and publishes in the rendezvous store (the
// coordinator's); every rank uses the GPU its backend computes on. Each operation is ordered
// after the work issued so far on the backend's compute stream (an event the communication
// stream waits on), so "gradients ready" means ready on the device. Spans in host memory (an
// evaluation's sums) go through a device scratch buffer. Operations are enqueued at once
// (NCCL calls do not block) and a watcher thread completes each handle when its event fires,
// or fails it on an asynchronous NCCL error; abort() is ncclCommAbort. The implementation is
// compiled into the CUDA module (compute/cuda); nccl_loader.cc reaches it from the binary.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "collective/collective.h"

namespace shoal {

// Where the communicator runs: the GPU, and the stream whose work (the backward that produced
// the gradients) every operation must follow; null orders after nothing.
struct NcclPlacement {
  int device = 0;
  void* producer_stream = nullptr;  // cudaStream_t
};

// The NCCL collective. Callers outside the CUDA module use this one: it loads the module
// (DeviceError, exit 7, naming what is missing, when it cannot be loaded or was not built).
std::unique_ptr<Collective> make_nccl_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const std::string& prefix, std::chrono::duration<double> timeout,
                                                 NcclPlacement placement);

namespace nccl {
// The implementation, inside the CUDA module (collective_nccl.cc).
std::unique_ptr<Collective> make_collective(RendezvousStore& store, const WorldInfo& world, const std::string& prefix,
                                            std::chrono::duration<double> timeout, const NcclPlacement& placement);
}  // namespace nccl

}  // namespace shoal
