// NCCL: all-reduce and broadcast of GPU buffers on a stream of their own. The communicator is
// made from an ncclUniqueId that rank 0 creates and publishes in the rendezvous store (the
// coordinator's); every rank uses the GPU of its local rank. Operations are enqueued at once
// (NCCL calls do not block) and a watcher thread completes each handle when its event fires,
// or fails it on an asynchronous NCCL error; abort() is ncclCommAbort. Built only with CUDA.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "core/collective.h"

namespace shoal {

std::unique_ptr<Collective> make_nccl_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const std::string& prefix, std::chrono::duration<double> timeout);

}  // namespace shoal
