// `shoal worker`: one trainer of an asynchronous job. Registers with the coordinator, takes
// the partition table, then asks for work until the job is over: trains leased data shards
// with the parameter-server strategy, evaluates the model when asked, reports each result.
#pragma once

#include <zmq.hpp>

#include "core/config.h"
#include "core/log.h"

namespace shoal {

void run_worker_role(zmq::context_t& context, const JobConfig& config, Logger log);

}  // namespace shoal
