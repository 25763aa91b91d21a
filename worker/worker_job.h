// `shoal worker`: one trainer of an asynchronous job. Registers with the coordinator, takes
// the partition table, then asks for work until the job is over: trains leased data shards
// with the parameter-server strategy, evaluates the model when asked, reports each result.
#pragma once

#include <atomic>
#include <zmq.hpp>

#include "config/config.h"
#include "base/log.h"
#include "telemetry/telemetry.h"
#include "comm/transport.h"

namespace shoal {

// `stop` (optional) asks the worker to leave the job and return normally, at any point of its
// life: before it registered, while it waits for the table or for parameters, mid-step (the
// step is finished first) or while it evaluates. A job that failed ends the worker with the
// job's error (and exit code).
// `telemetry` (optional): ready once registered; the worker's step, samples, loss and its
// traffic to each server (async). Rank 0 of a sync job adds the coordinator it hosts.
void run_worker_role(Network& network, const JobConfig& config, Logger log, const std::atomic<bool>* stop = nullptr,
                     Telemetry* telemetry = nullptr);

}  // namespace shoal
