// Gloo (Debian's libgloo, TCP transport): a world formed through a RendezvousStore (the
// coordinator's), so it can be formed again at another size without mpirun and without
// restarting processes. Operations run on the collective's own thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "collective/collective.h"

namespace shoal {

struct GlooOptions {
  // The network interface to bind ("eth0"); empty: `hostname` instead.
  std::string interface;
  // The address to bind when no interface is named ("127.0.0.1", a host name).
  std::string hostname = "127.0.0.1";
  // Every key this world writes starts with it ("gen1/"): a later world does not read stale keys.
  std::string prefix;
  // Forming the world (every rank must join) and each operation.
  std::chrono::duration<double> timeout{60.0};
};

// Forms the world: every rank of `world` must call this with the same prefix.
std::unique_ptr<Collective> make_gloo_collective(RendezvousStore& store, const WorldInfo& world,
                                                 const GlooOptions& options);

}  // namespace shoal
