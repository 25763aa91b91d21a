#!/usr/bin/env bash
# The README's second command (and CI's): install what is missing, build, run every test, then
# the sanitizer stages (tests/sanitizers/run.sh: ASan + UBSan, ThreadSanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup-debian.sh
launch/build.sh
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 900
tests/sanitizers/run.sh asan tsan
