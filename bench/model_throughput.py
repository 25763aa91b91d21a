#!/usr/bin/python3
"""Model training throughput: Shoal vs PyTorch on the same zoo model, batch and thread count.

Runs training steps (forward, cross-entropy, backward, SGD with momentum) of a model of the zoo
on one random batch, with Shoal's build/bench/shoal_model_step and with Debian's PyTorch 1.13 on
torchvision's definition of the same model (the same layers and parameter count), interleaving
the runs, and prints one table of median training samples/s and the ratio Shoal / PyTorch. No
data loading on either side: this measures the model's compute.

    bench/model_throughput.py [--models resnet18,mobilenet_v2] [--size 64] [--batch 32]
                              [--threads 2] [--runs 5] [--steps 10]

PyTorch gets its best settings: torch.set_num_threads(N), OPENBLAS_NUM_THREADS=1, oneDNN
(mkldnn) enabled as Debian builds it, zero_grad(set_to_none=True), warm-up steps untimed.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from torch_peer import ROOT, machine, torch_env

TORCH_WORKER = r"""
import json, sys, time
import torch, torchvision
name, size, batch, threads, steps, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(1)
model = getattr(torchvision.models, name)(num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = torch.nn.CrossEntropyLoss()
x = torch.randn(batch, 3, size, size)
y = torch.randint(0, 10, (batch,))
model.train()
def step():
    opt.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    opt.step()
for _ in range(warmup):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print(json.dumps({"samples_per_second": steps * batch / seconds, "torch": torch.__version__,
                  "parameters": sum(p.numel() for p in model.parameters())}))
"""


def run_torch(model, size, batch, threads, steps, warmup):
    out = subprocess.run([sys.executable, "-c", TORCH_WORKER, model, str(size), str(batch), str(threads), str(steps),
                          str(warmup)], env=torch_env(threads), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_shoal(binary, model, size, batch, threads, steps, warmup):
    out = subprocess.run([binary, model, str(size), str(batch), str(threads), str(steps), str(warmup)], check=True,
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads))).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build/bench/shoal_model_step"))
    args = ap.parse_args()
    rows, version = [], "?"
    for model in args.models.split(","):
        shoal, torch = [], []
        for _ in range(args.runs):  # interleaved: drift in the machine's load hits both alike
            s = run_shoal(args.binary, model, args.size, args.batch, args.threads, args.steps, args.warmup)
            t = run_torch(model, args.size, args.batch, args.threads, args.steps, args.warmup)
            if s["parameters"] != t["parameters"]:
                sys.exit(f"{model}: Shoal has {s['parameters']} parameters, torchvision {t['parameters']}")
            shoal.append(s["samples_per_second"])
            torch.append(t["samples_per_second"])
            version = t["torch"]
        rows.append((model, s["parameters"], statistics.median(shoal), statistics.median(torch), min(shoal), max(shoal),
                     min(torch), max(torch)))
    print(f"# training steps on a random batch: {args.size}x{args.size} RGB, batch {args.batch}, 10 classes, "
          f"{args.threads} threads, {args.steps} steps after {args.warmup} untimed, median of {args.runs} interleaved "
          f"runs; {machine()}; PyTorch {version}")
    print("| model | parameters | Shoal samples/s | PyTorch samples/s | Shoal / PyTorch | Shoal range | PyTorch range |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, p, s, t, smin, smax, tmin, tmax in rows:
        print(f"| {m} | {p:,} | {s:,.1f} | {t:,.1f} | **{s / t:.2f}×** | {smin:,.1f}–{smax:,.1f} | {tmin:,.1f}–{tmax:,.1f} |")


if __name__ == "__main__":
    main()
