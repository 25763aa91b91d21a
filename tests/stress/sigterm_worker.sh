#!/usr/bin/env bash
# Stress for a worker stopped with SIGTERM (not part of CI): N times, a small async job on
# loopback (mlp, 2 servers, 3 workers) with a CPU hog beside it, and SIGTERM to worker.1 at a
# random moment 50-950 ms after it registered. Prints each non-zero exit with the end of that
# worker's output (kept under /tmp/sigterm-fail-N), then a count per exit code.
#   tests/stress/sigterm_worker.sh [N=200] [SHOAL=build/shoal] [MODEL=mlp]
# Before the fix (oneDNN's GEMM + a signal handler on the compute thread) about 2.5 % of runs
# ended in glibc heap-corruption aborts; docs/async-training.md, "Signals".
set -u
cd "$(dirname "$0")/../.."
n=${1:-200}
shoal=$(realpath "${2:-build/shoal}")
model=${3:-mlp}
job=$(pwd)/examples/fashion_mnist_async.ini
yes >/dev/null &
hog=$!
trap 'kill $hog 2>/dev/null' EXIT
declare -A codes
for i in $(seq 1 "$n"); do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  args=(--cluster.coordinator=tcp://127.0.0.1:$port --cluster.servers=2 --cluster.workers=3 --threads=1
        --progress=off --model=$model --train.epochs=50 --data.train_limit=3000 --data.test_limit=500
        --data.shard_size=200 --optimizer.lr=0.01 --cluster.startup_timeout_seconds=20)
  dir=$(mktemp -d)
  "$shoal" coordinator "$job" "${args[@]}" >"$dir/coordinator.log" 2>&1 &
  pids=($!)
  for r in 0 1; do "$shoal" ps "$job" "${args[@]}" --node.rank=$r >"$dir/ps$r.log" 2>&1 & pids+=($!); done
  for r in 0 2; do "$shoal" worker "$job" "${args[@]}" --node.rank=$r >"$dir/worker$r.log" 2>&1 & pids+=($!); done
  "$shoal" worker "$job" "${args[@]}" --node.rank=1 >"$dir/worker1.log" 2>&1 &
  victim=$!
  for _ in $(seq 1 500); do grep -q "registered;" "$dir/worker1.log" && break; sleep 0.02; done
  sleep "0.$(printf '%03d' $((RANDOM % 900 + 50)))"
  kill -TERM $victim
  (sleep 10; kill -9 $victim 2>/dev/null) &
  watchdog=$!
  wait $victim
  rc=$?
  kill $watchdog 2>/dev/null
  codes[$rc]=$((${codes[$rc]:-0} + 1))
  if [[ $rc -ne 0 ]]; then
    echo "run $i: worker.1 exited $rc"
    tail -3 "$dir/worker1.log"
    cp -r "$dir" "/tmp/sigterm-fail-$i"
  fi
  kill -9 "${pids[@]}" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null
  rm -rf "$dir"
done
for code in "${!codes[@]}"; do echo "exit $code: ${codes[$code]} of $n"; done
