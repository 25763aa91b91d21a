// `shoal launch JOB.ini --local`: a whole job on this machine. Starts the coordinator,
// cluster.servers parameter servers and cluster.workers workers as child processes of the
// same binary on loopback, streams their output with a role prefix, and stops them all: when
// the coordinator ends the job, on Ctrl-C or SIGTERM, and (through PR_SET_PDEATHSIG) if the
// launcher itself is killed. No orphans, no hang: every wait has a deadline.
#pragma once

#include <string>
#include <vector>

#include "config/config.h"
#include "base/log.h"

namespace shoal {

// `overrides` are the command-line arguments after the job file; they are passed to every
// child. Returns the exit code of the job (the coordinator's).
int run_local_launch(const std::string& job_file, const std::vector<std::string>& overrides, const JobConfig& config,
                     Logger log);

// A TCP port on 127.0.0.1 that was free a moment ago.
int pick_free_port();

}  // namespace shoal
