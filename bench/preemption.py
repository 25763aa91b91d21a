#!/usr/bin/python3
"""Preemption inside the spot window: SIGTERM to one process of a running job, and the time until
that process has exited with its state in a complete checkpoint (GKE gives a spot VM's pods 15 s
of the 30 s notice; the target here is 10 s).

Cases, each a fresh `shoal launch --local` job on Fashion-MNIST with checkpoint.dir:
  worker       an async worker: it leaves (its leases go back; its state is the servers')
  server       an async parameter server: the job pauses at a checkpoint's cut, the server exits
               once its files are in (the launcher then restarts it, restored from that cut)
  coordinator  the async job's coordinator: the job stops at a step boundary with a last
               checkpoint (checkpoint.on_term_older_than = 0), every process exits 0
  sync rank    rank 1 of a 2-rank sync job (Gloo): the world agrees on a step, rank 0 writes it
For each model (mlp: 0.9 MB of parameters; resnet18: 45 MB) the table gives the checkpoint's size
(parameters, optimizer state and buffers), the seconds from the signal to the process's exit,
and, where the process holds state, to the checkpoint holding it being complete (its MANIFEST
and LATEST written). The physical limit in the same run: the seconds to write and fsync a file
of the checkpoint's size in the same folder (the part of the time that grows with the state).

  bench/preemption.py                  # about 3 minutes on 2 cores
  bench/preemption.py --models mlp     # a quick look
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)


def exited(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def latest(root):
    try:
        with open(os.path.join(root, "LATEST")) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    return name if os.path.exists(os.path.join(root, name, "MANIFEST")) else None


def size_of(root, name):
    folder = os.path.join(root, name)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def write_limit(folder, nbytes):
    """Seconds to write and fsync nbytes to a new file in `folder` (median of 3)."""
    times = []
    block = os.urandom(1 << 20)
    for i in range(3):
        path = os.path.join(folder, f"probe-{i}")
        start = time.monotonic()
        with open(path, "wb") as f:
            left = nbytes
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
            f.flush()
            os.fsync(f.fileno())
        times.append(time.monotonic() - start)
        os.remove(path)
    return statistics.median(times)


def stop(launch):
    """Ends a `shoal launch` that still runs, with its process group: SIGTERM, SIGKILL after 20 s."""
    if launch.poll() is None:
        os.killpg(launch.pid, signal.SIGTERM)
        try:
            launch.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()


def run_case(shoal, case, model, work):
    root = tempfile.mkdtemp(dir=work, prefix=f"{case.replace(' ', '-')}-{model}-")
    ckpt = os.path.join(root, "ckpt")
    sync = case == "sync rank"
    job = os.path.join(SOURCE, "examples", "fashion_mnist_sync.ini" if sync else "fashion_mnist_async.ini")
    argv = [shoal, "launch", job, "--local", f"--model={model}", "--train.epochs=3", "--data.train_limit=20000",
            "--data.test_limit=500", "--progress=off", f"--checkpoint.dir={ckpt}", "--checkpoint.on_term_older_than=0",
            "--checkpoint.every_steps=1000000", "--threads=1"]
    if sync:
        argv += ["--sync.backend=gloo"]
    else:
        argv += ["--cluster.servers=2", "--cluster.workers=2", "--data.shard_size=500"]
    log_path = os.path.join(root, "launch.log")
    log = open(log_path, "w")
    launch = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    target = {"worker": "worker.1", "server": "ps.1", "coordinator": "coordinator", "sync rank": "worker.1"}[case]
    try:
        deadline = time.monotonic() + 300
        pid = None
        while time.monotonic() < deadline:
            text = open(log_path).read()
            if text.count("training epoch 1") >= 2:
                found = re.findall(r"started " + re.escape(target) + r" \(pid ([0-9]+)\)", text)
                if found:
                    pid = int(found[-1])
                    break
            if launch.poll() is not None:
                break
            time.sleep(0.05)
        if pid is None:
            raise RuntimeError(f"{case}/{model}: the job did not start training; see {log_path}")
        time.sleep(1.0)  # a step or more into the epoch
        before = latest(ckpt)
        sent = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        while not exited(pid):
            if time.monotonic() - sent > 60:
                raise RuntimeError(f"{case}/{model}: {target} did not exit within 60 s; see {log_path}")
            time.sleep(0.005)
        exit_seconds = time.monotonic() - sent
        durable_seconds, name = None, None
        if case != "worker":
            while time.monotonic() - sent < 60:
                name = latest(ckpt)
                if name is not None and name != before:
                    durable_seconds = max(exit_seconds, time.monotonic() - sent)
                    break
                time.sleep(0.005)
            if durable_seconds is None:
                raise RuntimeError(f"{case}/{model}: no new complete checkpoint within 60 s; see {log_path}")
        nbytes = size_of(ckpt, name) if name else 0
        return exit_seconds, durable_seconds, nbytes, ckpt
    finally:
        stop(launch)
        log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shoal", default=os.path.join(SOURCE, "build", "shoal"))
    parser.add_argument("--models", default="mlp,resnet18")
    parser.add_argument("--cases", default="worker,server,coordinator,sync rank")
    parser.add_argument("--work", default=None, help="a folder for the jobs (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="shoal-preemption-")
    os.makedirs(work, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        for case in args.cases.split(","):
            exit_s, durable_s, nbytes, ckpt = run_case(args.shoal, case, model, work)
            limit = write_limit(ckpt, nbytes) if nbytes else None
            rows.append((case, model, nbytes, exit_s, durable_s, limit))
            print(f"  {case} / {model}: exit {exit_s:.2f} s", file=sys.stderr, flush=True)
    print("| SIGTERM to | model | checkpoint | to its exit | to its checkpoint complete | write + fsync of that size "
          "(limit) | within 10 s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, model, nbytes, exit_s, durable_s, limit in rows:
        worst = max(exit_s, durable_s or 0)
        held = "— (the servers' state)" if case == "worker" else f"{nbytes / 1e6:.1f} MB"
        print(f"| {case} | {model} | {held} | {exit_s:.2f} s | "
              f"{'—' if durable_s is None else f'{durable_s:.2f} s'} | "
              f"{'—' if limit is None else f'{limit:.2f} s'} | {'PASS' if worst < 10 else 'FAIL'} |")
    return 0 if all(max(r[3], r[4] or 0) < 10 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
