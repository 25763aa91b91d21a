// `shoal worker`: one trainer of an asynchronous job. Registers with the coordinator, takes
// the partition table, then asks for work until the job is over: trains leased data shards
// with the parameter-server strategy, evaluates the model when asked, reports each result.
#pragma once

#include <atomic>
#include <zmq.hpp>

#include "core/config.h"
#include "core/log.h"

namespace shoal {

// `stop` (optional) asks the worker to finish its step, leave the job and return.
void run_worker_role(zmq::context_t& context, const JobConfig& config, Logger log,
                     const std::atomic<bool>* stop = nullptr);

}  // namespace shoal
