#!/usr/bin/env bash
# Checkpoints and failures on the quickstart's job (cnn, 2 servers, 2 workers, `shoal launch
# --local`), with fewer epochs: the training stall per checkpoint and its cost in wall time
# against the same job without checkpoints, the recovery time after kill -9 of a worker and of
# a parameter server, and the final accuracy after a lost server against the undisturbed run.
# One table; every number comes from the jobs' metrics files of this run.
#
#   bench/elastic.sh [--epochs N] [--every-seconds S]     # about 6 minutes with the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=3
every=10
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs) epochs="$2"; shift 2 ;;
    --every-seconds) every="$2"; shift 2 ;;
    *) echo "usage: bench/elastic.sh [--epochs N] [--every-seconds S]" >&2; exit 2 ;;
  esac
done
shoal=build/shoal
job=examples/fashion_mnist_async.ini
[ -x "$shoal" ] || { echo "build first (launch/build.sh)" >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run NAME KILL_WHO TRIGGER [settings...]: one job; with KILL_WHO (ps.1, worker.1) that process
# gets SIGKILL 3 s after TRIGGER first appears in the output.
run() {
  local name=$1 who=$2 trigger=$3
  shift 3
  local out="$tmp/$name.out"
  "$shoal" launch "$job" --local "--train.epochs=$epochs" "--metrics.file=$tmp/$name.jsonl" "$@" >"$out" 2>&1 &
  local launcher=$!
  if [ "$who" != "-" ]; then
    until grep -q -- "$trigger" "$out" 2>/dev/null; do
      kill -0 "$launcher" 2>/dev/null || break
      sleep 0.2
    done
    sleep 3
    local pid
    pid=$(grep -o "started $who (pid [0-9]*)" "$out" | tail -1 | grep -o "[0-9]*)" | tr -d ')')
    [ -n "$pid" ] && kill -9 "$pid" && echo "  $name: kill -9 $who (pid $pid)" >&2
  fi
  if ! wait "$launcher"; then
    echo "$name failed:" >&2
    tail -30 "$out" >&2
    exit 1
  fi
}

echo "running 4 jobs of $epochs cnn epochs (2 servers, 2 workers) ..." >&2
run plain - - 
run checkpoints - - "--checkpoint.dir=$tmp/ckpt-a" "--checkpoint.every_seconds=$every"
run lost-worker worker.1 "training epoch 1" "--checkpoint.dir=$tmp/ckpt-b" "--checkpoint.every_seconds=$every" \
  --launch.restart_workers=true
run lost-server ps.1 " written: " "--checkpoint.dir=$tmp/ckpt-c" "--checkpoint.every_seconds=$every"

python3 - "$tmp" "$every" <<'EOF'
import json, statistics, sys
tmp, every = sys.argv[1], sys.argv[2]
def events(name, kind):
    out = []
    for line in open(f"{tmp}/{name}.jsonl"):
        e = json.loads(line)
        if e.get("event") == kind:
            out.append(e)
    return out
def end(name):
    return events(name, "end")[0]
def acc(name):
    return 100 * end(name)["final_test_accuracy"]
plain, ck = end("plain")["seconds"], end("checkpoints")["seconds"]
stalls = [1000 * e["stall_seconds"] for e in events("checkpoints", "checkpoint")]
writes = [e["bytes"] / e["write_seconds"] / 1e9 for e in events("checkpoints", "checkpoint") if e["write_seconds"] > 0]
size = events("checkpoints", "checkpoint")[0]["bytes"] / 1e6 if stalls else 0
print(f"| what | measured | against |")
print(f"| --- | ---: | --- |")
print(f"| training stall per checkpoint ({len(stalls)} checkpoints of {size:.1f} MB, every {every} s) | "
      f"median {statistics.median(stalls):.0f} ms (max {max(stalls):.0f}) | the {every} s interval: "
      f"{100 * statistics.median(stalls) / 1000 / float(every):.1f}% |")
print(f"| servers' write bandwidth | median {statistics.median(writes):.2f} GB/s | shoal_checkpoint_bench's plain write + fsync |")
print(f"| wall time with checkpoints | {ck:.1f} s | {plain:.1f} s without: {100 * (ck / plain - 1):+.1f}% |")
for name, who in (("lost-worker", "a worker"), ("lost-server", "a parameter server")):
    rec = events(name, "recovery")
    secs = ", ".join(f"{r['seconds']:.2f} s" for r in rec) or "none recorded"
    print(f"| recovery after kill -9 of {who} (last sign of life to the next completed shard) | {secs} | target < 5 s |")
# Two undisturbed runs (without and with checkpoints) show how far apart two runs of the same
# asynchronous job land; the lost-server run is compared with the nearer one.
near = min((abs(acc("lost-server") - acc(n)), n) for n in ("plain", "checkpoints"))
print(f"| final test accuracy | undisturbed {acc('plain'):.2f}% and {acc('checkpoints'):.2f}% (with checkpoints), "
      f"lost worker {acc('lost-worker'):.2f}%, lost server {acc('lost-server'):.2f}% | lost server within 0.5 points "
      f"of an undisturbed run: {'yes' if near[0] <= 0.5 else 'NO'} ({acc('lost-server') - acc(near[1]):+.2f} "
      f"against {near[1]}) |")
EOF
