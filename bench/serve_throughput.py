#!/usr/bin/python3
"""Serving throughput: `shoal serve` against a Flask + gunicorn + PyTorch 1.13 peer
(bench/serve_flask_peer.py) serving the same weights, measured with wrk.

For each model (cnn on 1x28x28, resnet20 on 3x32x32), input encoding (KServe v2 JSON tensors, and
the v2 binary tensor data extension) and concurrency (1, 16, 64 connections): wrk posts the same
one-sample request to Shoal's /v2/models/NAME/infer and then to the peer's, after a short warm-up,
and the bench prints requests/s and p50/p99 latency of both, their ratio and the median ratio.
Both servers run on the same cores, one after the other, never at once; the peer runs one
gunicorn sync worker per core with one torch thread each. Before any timing, both servers answer
the same input and their logits must agree within 1e-4 (relative): the same weights.

What it needs: build/shoal (built), wrk, gunicorn, python3-flask, python3-torch (1.13),
PIL (launch/setup-debian.sh --bench), and python3-onnx for the peer to read the exported model
(without it the peer reads the checkpoint's range files). It makes its own checkpoints under
--work: cnn trained on 6,000 Fashion-MNIST images (5 s), resnet20 on a generated 32x32 RGB folder
data set (about 30 s), and exports both to ONNX with `shoal export` for the peer.

The machine should be otherwise idle: the table's last column is the CPU (in cores) that
processes other than the server and wrk used during each run, Shoal's / the peer's.

  bench/serve_throughput.py                         # about 6 minutes
  bench/serve_throughput.py --duration 3 --warmup 1 # a quick look
  bench/serve_throughput.py --models cnn --encodings binary --shoal-args=--serve.max_delay_us=0
"""
import argparse
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

INPUT = {"cnn": (1, 28, 28), "resnet20": (3, 32, 32)}

LUA = r"""
local f = assert(io.open("%(body)s", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(content_type)s"
%(extra)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%%d duration_us=%%d p50_us=%%d p90_us=%%d p99_us=%%d max_us=%%d " ..
    "status=%%d connect=%%d read=%%d write=%%d timeout=%%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def machine():
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 2**20
    return model, int(nproc), mem_gib


def versions():
    import torch
    import flask
    gunicorn = subprocess.run(["gunicorn", "--version"], capture_output=True, text=True).stdout.strip()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk = (wrk.stdout + wrk.stderr).splitlines()[0].split(" Copyright")[0]
    return f"PyTorch {torch.__version__}, Flask {flask.__version__}, {gunicorn}, {wrk}"


def run(cmd, **kw):
    log("$", " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        log(r.stdout[-3000:], r.stderr[-3000:])
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}")
    return r


# ---- the models to serve ----------------------------------------------------------------------

def make_rgb_folder(root, per_class_train=60, per_class_test=10, classes=10):
    """A small 32x32 RGB data set (docs/data.md, data.format = folder): a colour and a bright band
    per class plus noise, learnable in a few steps."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        for c in range(classes):
            d = os.path.join(root, split, f"class{c}")
            os.makedirs(d, exist_ok=True)
            base = np.array([(c * 37) % 256, (c * 91) % 256, (c * 151) % 256], np.float32)
            for i in range(n):
                img = base + rng.normal(0, 40, (32, 32, 3))
                img[(c % 4) * 8:(c % 4) * 8 + 8] += 60
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(d, f"{i:04d}.png"))


def prepare(args):
    """{model: (checkpoint.dir, onnx file)}, training and exporting what is not there yet."""
    os.makedirs(args.work, exist_ok=True)
    out = {}
    for model in args.models:
        ckpt = os.path.join(args.work, f"{model}-ckpt")
        onnx = os.path.join(args.work, f"{model}.onnx")
        if not os.path.isfile(os.path.join(ckpt, "LATEST")):
            shutil.rmtree(ckpt, ignore_errors=True)
            common = [f"--checkpoint.dir={ckpt}", "--cluster.workers=1", "--cluster.servers=1", "--progress=off"]
            if model == "cnn":
                run([args.shoal, "launch", os.path.join(ROOT, "examples/fashion_mnist_async.ini"), "--local",
                     "--train.epochs=1", "--data.train_limit=6000"] + common)
            else:
                data = os.path.join(args.work, "rgb32")
                if not os.path.isdir(os.path.join(data, "test")):
                    make_rgb_folder(data)
                job = os.path.join(args.work, f"{model}.ini")
                with open(job, "w") as f:
                    f.write(f"model = {model}\n[data]\nformat = folder\ndir = {data}\nshard_size = 200\n"
                            "[train]\nepochs = 3\nbatch_size = 32\nseed = 1\n"
                            "[optimizer]\nname = sgd\nlr = 0.05\nmomentum = 0.8\n")
                # every_steps: the checkpoint the coordinator takes when an async job ends is
                # abandoned for a model with batch-norm buffers (no worker writes `buffers`).
                run([args.shoal, "launch", job, "--local", "--checkpoint.every_steps=20"] + common)
        if not os.path.isfile(onnx):
            run([args.shoal, "export", ckpt, "-o", onnx])
        out[model] = (ckpt, onnx)
    return out


# ---- servers ----------------------------------------------------------------------------------

def tree_pids(pid):
    """pid and its descendants."""
    pids, todo = [], [pid]
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children.get(p, []))
    return pids


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / tick


def busy_seconds():
    """CPU seconds the whole machine has been busy (all cores)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, kind, cmd, port, env=None, log_path=None):
        self.kind, self.port = kind, port
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        log("$", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{kind} exited ({self.proc.returncode}) before it was ready: see {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.time() > deadline:
                self.stop()
                raise SystemExit(f"{kind} was not ready within 120 s: see {log_path}")
            time.sleep(0.2)
        # gunicorn answers as soon as its first worker is up: give every worker time to load.
        if kind == "peer":
            time.sleep(3)

    def pids(self):
        return tree_pids(self.proc.pid)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        if r.status != 200:
            raise SystemExit(f"{url}: status {r.status}")
        return json.loads(r.read())


def logits_of(reply):
    for out in reply["outputs"]:
        if out["name"] == "logits":
            return np.asarray(out["data"], np.float64)
    raise SystemExit(f"no logits in the reply: {str(reply)[:300]}")


# ---- requests and wrk -------------------------------------------------------------------------

def make_requests(model, work):
    """{encoding: (body file, headers dict, body bytes)} of one random sample."""
    shape = [1] + list(INPUT[model])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = {}
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                   "data": [float(v) for v in x.ravel()]}]}).encode()
    out["json"] = (body, {"Content-Type": "application/json"})
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    out["binary"] = (header + x.astype("<f4").tobytes(),
                     {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    files = {}
    for enc, (body, headers) in out.items():
        path = os.path.join(work, f"{model}-{enc}.body")
        with open(path, "wb") as f:
            f.write(body)
        extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items() if k != "Content-Type")
        lua = os.path.join(work, f"{model}-{enc}.lua")
        with open(lua, "w") as f:
            f.write(LUA % {"body": path, "content_type": headers["Content-Type"], "extra": extra})
        files[enc] = (lua, headers, body)
    return files


def wrk(url, lua, connections, seconds, server_pids, threads):
    cmd = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", "10s", "-s", lua, url]
    busy0, srv0, t0 = busy_seconds(), cpu_seconds(server_pids), time.time()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    wall = time.time() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    busy = busy_seconds() - busy0
    server_cpu = cpu_seconds(server_pids) - srv0
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({p.returncode}): {err}\n{out}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["server_cpu"] = server_cpu / wall  # cores the server used
    r["wrk_cpu"] = wrk_cpu / wall         # cores wrk used
    r["other_cpu"] = max(0.0, (busy - server_cpu - wrk_cpu) / wall)  # cores anything else used
    return r


def measure(server, url, files, args, model, side, results):
    for enc in args.encodings:
        lua = files[enc][0]
        for c in args.concurrency:
            pids = server.pids()
            if args.warmup > 0:
                wrk(url, lua, c, args.warmup, pids, args.wrk_threads)
            r = wrk(url, lua, c, args.duration, pids, args.wrk_threads)
            results[(model, enc, c, side)] = r
            bad = r["status"]
            sock = r["connect"] + r["read"] + r["write"] + r["timeout"]
            log(f"  {side:5} {model:8} {enc:6} c={c:<3} {r['rps']:9.1f} req/s  p50 {r['p50_us'] / 1000:7.2f} ms  "
                f"p99 {r['p99_us'] / 1000:7.2f} ms  non-2xx {bad}  socket errors {sock}  "
                f"cores: server {r['server_cpu']:.2f}, wrk {r['wrk_cpu']:.2f}, other {r['other_cpu']:.2f}")


# ---- the table --------------------------------------------------------------------------------

def ms(us):
    return f"{us / 1000:.2f}"


def table(results, args):
    ratios = []
    lines = ["| model | input | concurrency | Shoal req/s | Shoal p50 ms | Shoal p99 ms | peer req/s | peer p50 ms | "
             "peer p99 ms | Shoal / peer | target (≥ 5×, lower p99) | other load, cores |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    errors = []
    for model in args.models:
        for enc in args.encodings:
            for c in args.concurrency:
                s = results.get((model, enc, c, "shoal"))
                p = results.get((model, enc, c, "peer"))
                for side, r in (("Shoal", s), ("peer", p)):
                    if r and (r["status"] or r["connect"] or r["read"] or r["write"] or r["timeout"]):
                        errors.append(f"{side} {model} {enc} c={c}: {r['status']} non-2xx, socket errors connect "
                                      f"{r['connect']} read {r['read']} write {r['write']} timeout {r['timeout']}")
                cell = lambda r, k: (f"{r['rps']:,.0f}" if k == "rps" else ms(r[k])) if r else "—"
                ratio = s["rps"] / p["rps"] if s and p else None
                if ratio:
                    ratios.append(ratio)
                verdict = "—"
                if ratio:
                    verdict = ("meets" if ratio >= 5 and s["p99_us"] < p["p99_us"] else
                               "misses" + (" (throughput)" if ratio < 5 else "") +
                               (" (p99)" if s["p99_us"] >= p["p99_us"] else ""))
                lines.append(f"| {model} | {enc} | {c} | {cell(s, 'rps')} | {cell(s, 'p50_us')} | {cell(s, 'p99_us')} | "
                             f"{cell(p, 'rps')} | {cell(p, 'p50_us')} | {cell(p, 'p99_us')} | "
                             f"{'**%.2f×**' % ratio if ratio else '—'} | {verdict} | "
                             f"{'/'.join('%.2f' % r['other_cpu'] for r in (s, p) if r)} |")
    return lines, ratios, errors


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--shoal", default=os.path.join(ROOT, "build/shoal"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "shoal-serve-bench"),
                   help="checkpoints, ONNX files, request bodies and logs (kept between runs)")
    p.add_argument("--models", default="cnn,resnet20")
    p.add_argument("--encodings", default="json,binary")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=int, default=8, help="seconds of each timed wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each timed run (not counted)")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (at most the connections)")
    p.add_argument("--shoal-port", type=int, default=18080)
    p.add_argument("--peer-port", type=int, default=18081)
    p.add_argument("--workers", type=int, default=0, help="gunicorn workers (0: nproc)")
    p.add_argument("--shoal-args", default="", help="extra settings for shoal serve, space-separated "
                   "(e.g. --serve.max_delay_us=0 --serve.http_threads=1 --threads=1)")
    p.add_argument("--skip-peer", action="store_true", help="Shoal only (no ratio)")
    p.add_argument("--json", default="", help="also write every measurement to this JSON file")
    args = p.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    args.encodings = [e for e in args.encodings.split(",") if e]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    for m in args.models:
        if m not in INPUT:
            raise SystemExit(f"--models: '{m}' is not one of {', '.join(INPUT)}")
    for tool in ("wrk", "gunicorn"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (launch/setup-debian.sh --bench)")
    cpu, nproc, mem = machine()
    workers = args.workers or nproc
    log(f"machine: {cpu}, nproc {nproc}, {mem:.0f} GiB; {versions()}")

    models = prepare(args)
    have_onnx = importlib.util.find_spec("onnx") is not None  # the peer reads the exported file with it
    if not have_onnx:
        log("python3-onnx is not installed: the peer reads the checkpoints' range files instead")
    results = {}
    for model in args.models:
        ckpt, onnx = models[model]
        files = make_requests(model, args.work)
        shoal_cmd = [args.shoal, "serve", ckpt, f"--serve.port={args.shoal_port}", "--progress=off"] + args.shoal_args.split()
        peer_env = dict(os.environ, PEER_MODEL=onnx if have_onnx else ckpt, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        peer_cmd = ["gunicorn", "-w", str(workers), "-k", "sync", "-b", f"127.0.0.1:{args.peer_port}",
                    "--chdir", BENCH, "--log-level", "warning", "serve_flask_peer:app"]
        shoal_url = f"http://127.0.0.1:{args.shoal_port}/v2/models/{model}/infer"
        peer_url = f"http://127.0.0.1:{args.peer_port}/v2/models/{model}/infer"

        # The same weights: both answer the same input (both encodings) with the same logits.
        logits = {}
        for side, cmd, url, env in (("shoal", shoal_cmd, shoal_url, None), ("peer", peer_cmd, peer_url, peer_env)):
            if side == "peer" and args.skip_peer:
                continue
            srv = Server(side, cmd, args.shoal_port if side == "shoal" else args.peer_port, env,
                         os.path.join(args.work, f"{model}-{side}.log"))
            try:
                for enc in args.encodings:
                    _, headers, body = files[enc]
                    logits[(side, enc)] = logits_of(post(url, body, headers))
            finally:
                srv.stop()
        ref = logits[("shoal", args.encodings[0])]
        for key, v in logits.items():
            rel = float(np.max(np.abs(v - ref)) / max(np.max(np.abs(ref)), 1e-30))
            log(f"{model}: {key[0]} {key[1]} logits vs Shoal {args.encodings[0]}: largest difference {rel:.2e} (relative)")
            if rel > 1e-4:
                raise SystemExit(f"{model}: {key[0]} ({key[1]}) does not serve the same model as Shoal: logits "
                                 f"{v[:4]} vs {ref[:4]}, relative difference {rel:.2e} > 1e-4")

        # Timed, one server at a time.
        for side, cmd, url, env in (("shoal", shoal_cmd, shoal_url, None), ("peer", peer_cmd, peer_url, peer_env)):
            if side == "peer" and args.skip_peer:
                continue
            srv = Server(side, cmd, args.shoal_port if side == "shoal" else args.peer_port, env,
                         os.path.join(args.work, f"{model}-{side}.log"))
            try:
                measure(srv, url, files, args, model, side, results)
            finally:
                srv.stop()

    lines, ratios, errors = table(results, args)
    print(f"Machine: {cpu}, {nproc} cores (nproc), {mem:.0f} GiB; {versions()}")
    print(f"Shoal: shoal serve CKPT {args.shoal_args}".rstrip() +
          f"; peer: gunicorn -w {workers} (sync) + Flask + PyTorch, 1 thread per worker; "
          f"wrk -t {args.wrk_threads}, {args.duration:g} s after {args.warmup:g} s of warm-up, one sample per request")
    print()
    print("\n".join(lines))
    if ratios:
        print()
        print(f"Median Shoal / peer: {statistics.median(ratios):.2f}× (over {len(ratios)} cells; "
              f"range {min(ratios):.2f}–{max(ratios):.2f}×)")
    loaded = [r["other_cpu"] for r in results.values() if r["other_cpu"] > 0.25]
    if loaded:
        print()
        print(f"Warning: other processes used up to {max(loaded):.2f} cores during {len(loaded)} runs: "
              "those numbers are disturbed (run again on an idle machine).")
    if errors:
        print()
        print("Not every response was 200:")
        for e in errors:
            print("  " + e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpu": cpu, "nproc": nproc, "mem_gib": mem}, "args": vars(args),
                       "results": [dict(zip(("model", "encoding", "concurrency", "side"), k), **v)
                                   for k, v in results.items()]}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
