// `shoal ps`: the parameter-server role around one ParameterServer, written against its public
// API. Registers with the coordinator, takes the partition table, builds the initial model to
// take its part, and serves until the job ends (or a SIGTERM lets it go). Called by launch/main.cc
// and by the in-process cluster of the tests.
#pragma once

#include <atomic>

#include "base/log.h"
#include "comm/transport.h"
#include "config/config.h"
#include "telemetry/telemetry.h"

namespace shoal {

// The whole role: register with the coordinator, take the table, serve until the job ends.
// A job that failed ends it with the job's error (and exit code). When `stop` turns true
// (SIGTERM: a preempted VM or pod) the server asks the coordinator to cut a checkpoint, serves
// until its part of it is written (at most cluster.request_timeout_seconds), leaves, and
// returns normally (exit 0): its replacement restores from that checkpoint.
// `telemetry` (optional): ready once registered; the server's counters, clock and staleness.
void run_server_role(Network& network, const JobConfig& config, Logger log, const std::atomic<bool>* stop = nullptr,
                     Telemetry* telemetry = nullptr);

}  // namespace shoal
