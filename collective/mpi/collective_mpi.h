// Open MPI: the process's MPI runtime, the world mpirun started it in, and a Collective over
// it. MPI is initialised once per process (MPI_THREAD_SERIALIZED): its calls are made by the
// thread that initialised it during start-up and then only by the collective's own thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "collective/collective.h"

namespace shoal {
namespace mpi {

// True when this process was started by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE is set).
bool launched_by_mpirun();
// Rank, size and local rank from Open MPI's environment; ConfigError naming the variable when
// one is malformed. Nothing when not under mpirun.
std::optional<WorldInfo> world_from_environment();
// Initialises MPI once (idempotent). Throws DeviceError if MPI cannot start.
void init();
bool initialized();
// Finalises MPI if it was initialised and nothing failed (a failed world is left to exit).
void finalize();
// Rank `root`'s string reaches every rank (start-up only, before any collective exists).
std::string broadcast_string(const std::string& value, int root);
// Ends every process of the world with `code` (mpirun then exits non-zero). For a failure
// that the other ranks cannot learn of any other way.
[[noreturn]] void abort_world(int code);

}  // namespace mpi

// A Collective over a duplicate of MPI_COMM_WORLD (mpi::init() first). Operations run on its
// own thread with blocking MPI calls; errors are returned, never fatal.
std::unique_ptr<Collective> make_mpi_collective();

}  // namespace shoal
