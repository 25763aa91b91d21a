#!/usr/bin/env bash
# Does the staleness-aware learning rate let more asynchronous workers train at the
# single-process learning rate? Runs examples/fashion_mnist_async.ini (cnn, SGD lr 0.05,
# momentum 0.9, cosine, 10 epochs, 2 servers, staleness 2) with W workers, once with
# async.lr_staleness = none and once with inverse, and prints the final test accuracy of each
# beside the single-process run of the same model and rate (examples/fashion_mnist_cnn.ini).
#
#   bench/staleness_accuracy.sh [--workers W] [--epochs E] [--no-single] [-- extra shoal flags]
#
# Takes about 4 minutes per run on 2 cores. Uses build/shoal (launch/build.sh builds it).
set -euo pipefail
cd "$(dirname "$0")/.."
workers=4 epochs=10 single=1 extra=()
while (($#)); do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --no-single) single=0; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "staleness_accuracy.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
shoal=./build/shoal
[[ -x $shoal ]] || { echo "staleness_accuracy.sh: $shoal is missing; run launch/build.sh" >&2; exit 2; }
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Prints "accuracy|seconds|outcome" of one run.
run() {
  local name=$1; shift
  local code=0 started=$SECONDS
  "$shoal" "$@" --train.epochs="$epochs" --progress=lines "${extra[@]}" >"$logs/$name" 2>&1 || code=$?
  local acc
  acc=$(sed -n 's/.*final test accuracy: \([0-9.]*\)%.*/\1/p' "$logs/$name" | tail -1)
  local outcome="finished"
  if ((code != 0)); then
    outcome="exit $code: $(grep -m1 -E 'diverged|error|failed' "$logs/$name" | sed 's/^.*\] //' | cut -c1-90)"
  fi
  echo "${acc:-–}|$((SECONDS - started)) s|$outcome"
}

echo "# cnn on Fashion-MNIST, SGD lr 0.05 momentum 0.9 cosine, $epochs epochs; $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "| run | final test accuracy | time | outcome |"
echo "| --- | ---: | ---: | --- |"
if ((single)); then
  IFS='|' read -r a t o < <(run single train examples/fashion_mnist_cnn.ini)
  echo "| 1 process (shoal train) | $a% | $t | $o |"
fi
for mode in none inverse; do
  IFS='|' read -r a t o < <(run "$mode" launch examples/fashion_mnist_async.ini --local \
    --cluster.workers="$workers" --async.lr_staleness="$mode" \
    --optimizer.momentum=0.9 --lr.warmup_epochs=0.2)  # the single-process recipe, not the example's
  echo "| $workers async workers, 2 servers, lr_staleness = $mode | $a% | $t | $o |"
done
