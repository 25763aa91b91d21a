#!/usr/bin/env bash
# The README's second command (and CI's): install what is missing, build, run every test, then
# the sanitizer stages (tests/sanitizers/run.sh: ASan + UBSan, ThreadSanitizer). Each stage's
# wall time is printed as it ends ("stage plain-build: 95 s"), for the CI budget (25 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
stage() {  # NAME COMMAND...
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "stage $name: $((SECONDS - start)) s"
}
stage setup launch/setup-debian.sh
stage plain-build launch/build.sh
stage plain-tests ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900
stage asan tests/sanitizers/run.sh asan
stage tsan tests/sanitizers/run.sh tsan
