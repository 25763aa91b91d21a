// NCCL: all-reduce and broadcast of GPU buffers on a stream of their own. The communicator is
// made from an ncclUniqueId that rank 0 creates and publishes in the rendezvous store (the
// coordinator's); every rank uses the GPU its backend computes on. Each operation is ordered
// after the work issued so far on the backend's compute stream (an event the communication
// stream waits on), so "gradients ready" means ready on the device. Spans in host memory (an
// evaluation's sums) go through a device scratch buffer. Operations are enqueued at once
// (NCCL calls do not block) and a watcher thread completes each handle when its event fires,
// or fails it on an asynchronous NCCL error; abort() is ncclCommAbort. Built only with CUDA.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/collective.h"

namespace shoal {

// Where the communicator runs: the GPU, and the stream whose work (the backward that produced
// the gradients) every operation must follow; null orders after nothing.
struct NcclPlacement {
  int device = 0;
  void* producer_stream = nullptr;  // cudaStream_t
};

std::unique_ptr<Collective> make_nccl_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const std::string& prefix, std::chrono::duration<double> timeout,
                                                 NcclPlacement placement);

}  // namespace shoal
