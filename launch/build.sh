#!/usr/bin/env bash
# Configures (once) and builds Shoal into ./build with Ninja. Extra arguments go to CMake on the
# first configure, e.g. launch/build.sh -DSHOAL_CUDA=OFF. SHOAL_TARGETS (e.g. "shoal") builds
# only those targets (the container images build the binary alone).
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache: paths relative to the checkout, so a clone elsewhere (CI's) reuses the objects.
export CCACHE_BASEDIR=$(pwd) CCACHE_NOHASHDIR=1
if [[ ! -f build/build.ninja ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >build-configure.log 2>&1 ||
    { cat build-configure.log; exit 1; }
  grep "shoal:" build-configure.log || true
fi
# shellcheck disable=SC2086  # a list of targets
cmake --build build ${SHOAL_TARGETS:+--target $SHOAL_TARGETS}
