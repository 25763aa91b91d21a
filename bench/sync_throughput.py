#!/usr/bin/python3
"""Synchronous data-parallel training throughput: Shoal's sync strategy vs PyTorch
DistributedDataParallel, 2 ranks on this host, same model, batch, data order and threads per rank.

Trains one epoch of Fashion-MNIST (or --steps global steps) with
`shoal launch JOB --local --strategy=sync --sync.backend=gloo|mpi --cluster.workers=2` and with
PyTorch DDP over gloo (Debian's python3-torch), each several times, interleaved, and prints one
table of median training samples/s (all ranks' samples / the slowest rank's training time;
data loading and evaluation excluded on both sides) and the ratio Shoal / DDP.

    bench/sync_throughput.py [--threads 1] [--batch 64] [--runs 3] [--steps N] [--models cnn]
                             [--backends gloo,mpi] [--shoal build/shoal]

Both sides: per-rank batch B, SGD lr 0.01 momentum 0.9 (constant), gradients all-reduced in
25 MiB buckets while backward runs, one permutation of the training set per epoch shared by
both ranks (each side draws its own: different generators); at global step s rank r trains
positions [s*2B + r*B, s*2B + (r+1)*B) of it. DDP drops the tail that does not fill a global step (32 samples of 60000 at B = 64); Shoal
trains it as one last smaller step. --steps N trains N*2B samples (Shoal: --data.train_limit).

PyTorch gets its best settings: torch.set_num_threads(--threads), OPENBLAS_NUM_THREADS=1, data
preloaded as one tensor (no DataLoader), gradient_as_bucket_view=True with zero_grad keeping
the gradients (set_to_none would allocate fresh ones and copy them into the buckets every
step), gloo on 127.0.0.1. A Shoal backend whose run fails prints its row as "failed: <first error line>"; the DDP
row is printed regardless.
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys

from torch_peer import DATA, ROOT, load_fashion_mnist, machine, make_model, test_accuracy, torch_env

WORLD = 2
# The coordinator's line, after launch's "name | " prefix:
#   epoch 1/1  train loss 0.5123 acc 81.20%  |  test loss 0.4 acc 85.10%  |  1234 samples/s  |  ...
EPOCH_LINE = re.compile(r"\bepoch \d+/\d+\s+train loss .*?test loss \S+ acc ([\d.]+)%\s*\|\s*([\d.]+) samples/s")


# ---------------------------------------------------------------------------------------------
# PyTorch DDP: one process per rank, started by run_ddp() as `sync_throughput.py --rank R ...`.

def ddp_rank(a):
    import time
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    global_batch = WORLD * a.batch
    xtr, ytr, xte, yte = load_fashion_mnist(DATA, a.steps * global_batch if a.steps else 0)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=WORLD)
    model = DistributedDataParallel(make_model(a.models), bucket_cap_mb=a.bucket_mb,
                                    gradient_as_bucket_view=a.bucket_view == "on")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator()
    gen.manual_seed(a.seed)
    perm = torch.randperm(len(xtr), generator=gen)  # the same on both ranks
    steps = len(xtr) // global_batch  # the tail that does not fill a global step is dropped
    mine = [perm[s * global_batch + a.rank * a.batch: s * global_batch + (a.rank + 1) * a.batch]
            for s in range(steps)]
    set_to_none = a.bucket_view != "on"
    model.train()
    dist.barrier()
    start = time.perf_counter()
    for i in mine:
        opt.zero_grad(set_to_none=set_to_none)
        loss = loss_fn(model(xtr[i]), ytr[i])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    result = {"rank": a.rank, "seconds": seconds, "samples": steps * a.batch, "loss": loss.item(),
              "param_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
              "torch": torch.__version__}
    if a.rank == 0:
        result["test_accuracy"] = test_accuracy(model.module, xte, yte)
    dist.barrier()
    dist.destroy_process_group()
    print(json.dumps(result), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ddp(args, model, seed):
    port = free_port()
    env = dict(torch_env(args.threads), GLOO_SOCKET_IFNAME="lo")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--rank", str(r), "--port", str(port),
                               "--models", model, "--threads", str(args.threads), "--batch", str(args.batch),
                               "--steps", str(args.steps), "--seed", str(seed), "--bucket-mb", str(args.bucket_mb),
                               "--bucket-view", args.bucket_view],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(WORLD)]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=args.timeout)
            if p.returncode != 0:
                raise RuntimeError(f"DDP rank failed (exit {p.returncode}): {err.strip()[-2000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    sums = [r["param_sum"] for r in results]
    if abs(sums[0] - sums[1]) > 1e-6 * max(1.0, abs(sums[0])):
        print(f"warning: DDP replicas differ after training (parameter sums {sums})", file=sys.stderr)
    return {"samples_per_second": sum(r["samples"] for r in results) / max(r["seconds"] for r in results),
            "test_accuracy": results[0]["test_accuracy"], "torch": results[0]["torch"]}


# ---------------------------------------------------------------------------------------------
# Shoal

def first_error(stderr, stdout):
    """The first line that says error (a rank's error comes through launch's stdout, prefixed with
    its name), else the first line of stderr, else of stdout."""
    lines = [[l.strip() for l in t.splitlines() if l.strip()] for t in (stderr, stdout)]
    for l in lines[0] + lines[1]:
        if re.search(r"error|fatal|abort|fail", l, re.I):
            return l
    return (lines[0] or lines[1] or ["no output"])[0]


def run_shoal(args, backend, model, seed):
    """{'samples_per_second', 'test_accuracy'} or {'failed': reason}."""
    if not os.access(args.shoal, os.X_OK):
        return {"failed": f"{args.shoal}: no such executable (build Shoal first)"}
    cmd = [args.shoal, "launch", args.job, "--local", "--strategy=sync", f"--sync.backend={backend}",
           f"--cluster.workers={WORLD}", f"--threads={args.threads}", "--train.epochs=1",
           f"--train.batch_size={args.batch}", f"--model={model}", "--progress=off", "--log.level=warn",
           f"--train.seed={seed}", "--optimizer.lr=0.01", "--optimizer.momentum=0.9", "--lr.schedule=constant",
           "--lr.warmup_epochs=0", f"--sync.bucket_mib={args.bucket_mb}"]
    if args.steps:
        cmd.append(f"--data.train_limit={args.steps * WORLD * args.batch}")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {args.timeout} s"}
    except OSError as e:
        return {"failed": str(e)}
    m = EPOCH_LINE.search(p.stdout)
    if p.returncode != 0 or not m:
        why = first_error(p.stderr, p.stdout)
        return {"failed": (f"exit {p.returncode}: " if p.returncode else "no epoch line: ") + why[:200]}
    return {"samples_per_second": float(m.group(2)), "test_accuracy": float(m.group(1)) / 100}


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="compute threads per rank (default 1)")
    ap.add_argument("--runs", type=int, default=3, help="runs per row; the table shows medians (default 3)")
    ap.add_argument("--batch", type=int, default=64, help="per-rank batch (default 64; global = 2 x batch)")
    ap.add_argument("--steps", type=int, default=0, help="train only this many global steps (default 0: one epoch)")
    ap.add_argument("--models", default="cnn", help="comma-separated: cnn, mlp (default cnn)")
    ap.add_argument("--backends", default="gloo,mpi", help="Shoal's sync.backend rows (default gloo,mpi)")
    ap.add_argument("--shoal", default=os.path.join(ROOT, "build/shoal"))
    ap.add_argument("--job", default=os.path.join(ROOT, "examples/fashion_mnist_sync.ini"))
    ap.add_argument("--bucket-mb", type=float, default=25, help="all-reduce bucket size, both sides (default 25)")
    ap.add_argument("--bucket-view", choices=["on", "off"], default="on",
                    help="DDP gradient_as_bucket_view (default on, its faster setting)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run before giving up")
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)  # internal: run one DDP rank
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank is not None:
        return ddp_rank(args)
    args.shoal = os.path.abspath(args.shoal)
    args.job = os.path.abspath(args.job)
    backends = [b for b in args.backends.split(",") if b]

    rows = []
    torch_version = "?"
    for model in args.models.split(","):
        shoal = {b: [] for b in backends}
        failed = {}
        ddp = []
        for r in range(args.runs):  # interleaved, so drift in machine load hits every row alike
            for b in backends:
                if b in failed:
                    continue
                res = run_shoal(args, b, model, args.seed + r)
                if "failed" in res:
                    failed[b] = res["failed"]
                else:
                    shoal[b].append(res)
            res = run_ddp(args, model, args.seed + r)
            torch_version = res["torch"]
            ddp.append(res)
        ddp_rate = statistics.median(x["samples_per_second"] for x in ddp)
        for b in backends:
            if b in failed:
                rows.append((model, f"Shoal sync ({b})", f"failed: {failed[b]}", "", "", ""))
            else:
                rows.append(summarise(model, f"Shoal sync ({b})", shoal[b], ddp_rate))
        rows.append(summarise(model, "PyTorch DDP (gloo)", ddp, ddp_rate))

    length = f"{args.steps} global steps" if args.steps else "1 epoch"
    print(f"# sync data-parallel training throughput, Fashion-MNIST, {WORLD} ranks x batch {args.batch} "
          f"(global {WORLD * args.batch}), {args.threads} thread(s) per rank, {length}, median of {args.runs} runs; "
          f"{machine()}; PyTorch {torch_version}, DDP bucket {args.bucket_mb:g} MiB, "
          f"gradient_as_bucket_view {args.bucket_view}")
    print("| model | what | samples/s | vs DDP | test acc | range |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


def summarise(model, what, results, ddp_rate):
    rates = [x["samples_per_second"] for x in results]
    rate = statistics.median(rates)
    acc = statistics.median(x["test_accuracy"] for x in results)
    return (model, what, f"{rate:,.0f}", f"**{rate / ddp_rate:.2f}×**", f"{100 * acc:.2f}%",
            f"{min(rates):,.0f}–{max(rates):,.0f}")


if __name__ == "__main__":
    sys.exit(main())
