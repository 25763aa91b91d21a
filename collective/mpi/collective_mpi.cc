#include "collective/mpi/collective_mpi.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <vector>

#include "base/environment.h"

namespace shoal {
namespace mpi {
namespace {

std::atomic<bool> g_initialized{false}, g_failed{false};

std::string error_string(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<std::size_t>(length));
}

void check(int code, const char* call) {
  if (code != MPI_SUCCESS) {
    g_failed = true;
    throw CollectiveError(std::string(call) + " failed: " + error_string(code));
  }
}

int env_int(const char* name, int low, int high) {
  auto value = env_integer(name, low, high);
  SHOAL_REQUIRE(value.has_value(), ConfigError, "started by mpirun but " << name << " is not set");
  return static_cast<int>(*value);
}

}  // namespace

bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

std::optional<WorldInfo> world_from_environment() {
  if (!launched_by_mpirun()) return std::nullopt;
  WorldInfo w;
  w.size = env_int("OMPI_COMM_WORLD_SIZE", 1, 1 << 20);
  w.rank = env_int("OMPI_COMM_WORLD_RANK", 0, w.size - 1);
  w.local_rank = static_cast<int>(env_integer("OMPI_COMM_WORLD_LOCAL_RANK", 0, w.size - 1).value_or(0));
  w.local_size = static_cast<int>(env_integer("OMPI_COMM_WORLD_LOCAL_SIZE", 1, w.size).value_or(w.size));
  return w;
}

void init() {
  if (g_initialized) return;
  int provided = 0;
  int code = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  SHOAL_REQUIRE(code == MPI_SUCCESS, DeviceError, "MPI_Init_thread failed: " << error_string(code));
  SHOAL_REQUIRE(provided >= MPI_THREAD_SERIALIZED, DeviceError,
                "this MPI library does not support MPI_THREAD_SERIALIZED (provides level " << provided << ")");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  g_initialized = true;
}

bool initialized() { return g_initialized; }

void finalize() {
  if (!g_initialized || g_failed) return;
  int done = 0;
  MPI_Finalized(&done);
  if (!done) MPI_Finalize();
}

std::string broadcast_string(const std::string& value, int root) {
  SHOAL_REQUIRE(g_initialized.load(), InternalError, "MPI is not initialised");
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int length = rank == root ? static_cast<int>(value.size()) : 0;
  check(MPI_Bcast(&length, 1, MPI_INT, root, MPI_COMM_WORLD), "MPI_Bcast");
  SHOAL_REQUIRE(length >= 0 && length <= (1 << 20), ProtocolError, "MPI_Bcast of a string of " << length << " bytes");
  std::string out = rank == root ? value : std::string(static_cast<std::size_t>(length), '\0');
  if (length > 0) check(MPI_Bcast(out.data(), length, MPI_CHAR, root, MPI_COMM_WORLD), "MPI_Bcast");
  return out;
}

void abort_world(int code) {
  g_failed = true;
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; this is for the compiler
}

}  // namespace mpi

namespace {

class MpiCollective final : public ThreadedCollective {
 public:
  MpiCollective() {
    SHOAL_REQUIRE(mpi::initialized(), InternalError, "MPI is not initialised");
    mpi::check(MPI_Comm_dup(MPI_COMM_WORLD, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &world_.rank);
    MPI_Comm_size(comm_, &world_.size);
    if (auto env = mpi::world_from_environment()) world_.local_rank = env->local_rank;
    start();
  }
  ~MpiCollective() override {
    stop();
    // The communicator is released with MPI_Finalize (freeing it would be a collective call,
    // which a rank of a failed world must not make).
  }

  const WorldInfo& world() const override { return world_; }
  std::string describe() const override {
    return "mpi (Open MPI, rank " + std::to_string(world_.rank) + " of " + std::to_string(world_.size) + ")";
  }

 protected:
  Call all_reduce_call(std::span<float> data, ReduceOp op) override {
    return [comm = comm_, size = world_.size, data, op] {
      // MPI counts are ints: cut larger buffers.
      for (std::size_t at = 0; at < data.size(); at += kMaxCount) {
        int count = static_cast<int>(std::min(kMaxCount, data.size() - at));
        mpi::check(MPI_Allreduce(MPI_IN_PLACE, data.data() + at, count, MPI_FLOAT, MPI_SUM, comm), "MPI_Allreduce");
      }
      if (op == ReduceOp::average && size > 1) {
        const float inv = 1.f / static_cast<float>(size);
        for (float& v : data) v *= inv;
      }
    };
  }
  Call broadcast_call(std::span<float> data, int root) override {
    return [comm = comm_, data, root] {
      for (std::size_t at = 0; at < data.size(); at += kMaxCount) {
        int count = static_cast<int>(std::min(kMaxCount, data.size() - at));
        mpi::check(MPI_Bcast(data.data() + at, count, MPI_FLOAT, root, comm), "MPI_Bcast");
      }
    };
  }

 private:
  static constexpr std::size_t kMaxCount = INT_MAX / 2;
  MPI_Comm comm_ = MPI_COMM_NULL;
  WorldInfo world_;
};

}  // namespace

std::unique_ptr<Collective> make_mpi_collective() { return std::make_unique<MpiCollective>(); }

}  // namespace shoal
