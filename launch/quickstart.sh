#!/usr/bin/env bash
# The README's first command: install what is missing, build, and run the main job: the `cnn`
# model on Fashion-MNIST, trained asynchronously by 2 parameter servers and 2 workers started
# here as processes on loopback. Extra arguments are passed to `shoal`, e.g. --train.epochs=3.
set -euo pipefail
cd "$(dirname "$0")/.."
launch/setup-debian.sh
launch/build.sh
exec ./build/shoal launch examples/fashion_mnist_async.ini --local "$@"
