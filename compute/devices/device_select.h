// Which device a process computes on. `device = auto` takes a GPU when this build has the CUDA
// backend and one is visible, else the CPU; a process's GPU is its local rank on the host (as
// mpirun, `shoal launch` or a torchrun-style launcher number them) modulo the GPUs it sees, so
// a Kubernetes pod given one GPU always uses the one it sees. The choice is a pure function of
// its inputs, so it is tested as a table (tests/compute/device_select_test.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "compute/tensor.h"

namespace shoal {

struct DeviceChoice {
  Device device;
  std::string why;  // for the log: "device = auto: GPU 1 of 4 (local rank 1 from OMPI_COMM_WORLD_LOCAL_RANK)"
};

struct LocalRank {
  int rank = 0;
  std::string source;  // the variable it came from
};

// node.local_rank when it is set (>= 0; `shoal launch --local` sets it for each worker), else
// the first of OMPI_COMM_WORLD_LOCAL_RANK (mpirun) and LOCAL_RANK (torchrun-style launchers)
// that is set; ConfigError naming a malformed variable.
std::optional<LocalRank> local_rank_of(std::int64_t configured);

// setting is auto, cpu or cuda. DeviceError when cuda is asked for and cannot be had.
DeviceChoice choose_device(const std::string& setting, const std::optional<LocalRank>& local_rank, int visible_gpus,
                           bool cuda_built);

// choose_device with local_rank_of(configured_local_rank) and this build's view of the machine.
DeviceChoice choose_device(const std::string& setting, std::int64_t configured_local_rank);

}  // namespace shoal
