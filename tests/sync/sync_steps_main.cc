// `shoal_sync_steps OUT_FILE MODEL SYNC_BN LR`: run under mpirun, trains the equivalence run of
// tests/support/sync_steps.h over the MPI backend and writes rank 0's parameters to OUT_FILE
// (raw float32). Used by sync_process_test.cc.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "collective/mpi/collective_mpi.h"
#include "base/error.h"
#include "tests/support/sync_steps.h"

int main(int argc, char** argv) {
  using namespace shoal;
  if (argc != 5) {
    std::fprintf(stderr, "usage: shoal_sync_steps OUT_FILE MODEL SYNC_BN(0|1) LR\n");
    return 2;
  }
  try {
    mpi::init();
    std::vector<float> params;
    {
      auto c = make_mpi_collective();
      SyncRun run;
      run.model = argv[2];
      run.sync_batch_norm = std::strcmp(argv[3], "1") == 0;
      run.world = c->size();
      run.lr = std::strtof(argv[4], nullptr);
      params = train_sync_steps(run, c.get());
      if (c->rank() == 0) {
        std::ofstream out(argv[1], std::ios::binary);
        out.write(reinterpret_cast<const char*>(params.data()), static_cast<std::streamsize>(params.size() * 4));
      }
    }
    mpi::finalize();
    return 0;
  } catch (...) {
    Failure f = failure_of(std::current_exception());
    std::fprintf(stderr, "shoal_sync_steps: %s\n", f.message.c_str());
    return static_cast<int>(f.code);
  }
}
