#!/usr/bin/python3
"""Training throughput: Shoal vs PyTorch on the same model, batch, data and thread count.

Trains `mlp` and `cnn` for one epoch on Fashion-MNIST with `shoal train` and with Debian's
PyTorch (python3-torch), each several times, and prints one table of median training samples/s
(evaluation excluded on both sides) and the ratio Shoal / PyTorch.

    bench/train_throughput.py [--threads N] [--runs R] [--models mlp,cnn] [--shoal build/shoal]

PyTorch gets its best settings here: torch.set_num_threads(N) and OPENBLAS_NUM_THREADS=1
(Debian's build otherwise runs OpenBLAS threads against its own), data preloaded as one tensor,
no DataLoader. Both sides read the same gzip IDX files and normalise with the training set's
mean and standard deviation.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from torch_peer import BENCH, DATA, ROOT, machine, torch_env

TORCH_WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[6])
import torch
import torch.nn as nn
import torch_peer

model_name, threads, batch, seed, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
torch.manual_seed(seed)
xtr, ytr, xte, yte = torch_peer.load_fashion_mnist(data)
model = torch_peer.make_model(model_name)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
loss_fn = nn.CrossEntropyLoss()
order = torch.randperm(len(xtr))
model.train()
start = time.perf_counter()
for i in range(0, len(xtr), batch):
    idx_b = order[i:i + batch]
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(xtr[idx_b]), ytr[idx_b])
    loss.backward()
    opt.step()
seconds = time.perf_counter() - start
print(json.dumps({"samples_per_second": len(xtr) / seconds, "test_accuracy": torch_peer.test_accuracy(model, xte, yte),
                  "torch": torch.__version__}))
"""


def run_pytorch(model, threads, batch, seed):
    out = subprocess.run([sys.executable, "-c", TORCH_WORKER, model, str(threads), str(batch), str(seed), DATA, BENCH],
                         env=torch_env(threads), check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_shoal(shoal, model, threads, batch, seed):
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        subprocess.run([shoal, "train", os.path.join(ROOT, "examples/fashion_mnist_cnn.ini"), f"--model={model}",
                        "--train.epochs=1", f"--train.batch_size={batch}", f"--threads={threads}",
                        f"--train.seed={seed}", "--optimizer.lr=0.01", "--optimizer.momentum=0.9",
                        "--lr.schedule=constant", "--lr.warmup_epochs=0", "--progress=off", "--log.level=warn",
                        f"--metrics.file={metrics}"], check=True, capture_output=True, text=True)
        for line in open(metrics):
            event = json.loads(line)
            if event.get("event") == "epoch":
                return event


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--shoal", default=os.path.join(ROOT, "build/shoal"))
    args = ap.parse_args()

    rows = []
    torch_version = "?"
    for model in args.models.split(","):
        shoal_rates, torch_rates, shoal_acc, torch_acc = [], [], [], []
        for r in range(args.runs):  # interleaved, so drift in machine load hits both sides alike
            s = run_shoal(args.shoal, model, args.threads, args.batch, r + 1)
            t = run_pytorch(model, args.threads, args.batch, r + 1)
            torch_version = t["torch"]
            shoal_rates.append(s["samples_per_second"])
            shoal_acc.append(s["test_accuracy"])
            torch_rates.append(t["samples_per_second"])
            torch_acc.append(t["test_accuracy"])
        rows.append((model, statistics.median(shoal_rates), statistics.median(torch_rates),
                     statistics.median(shoal_acc), statistics.median(torch_acc), min(shoal_rates), max(shoal_rates),
                     min(torch_rates), max(torch_rates)))

    print(f"# training throughput, Fashion-MNIST, 1 epoch, batch {args.batch}, {args.threads} threads, "
          f"median of {args.runs} runs; {machine()}; "
          f"PyTorch {torch_version}")
    print(f"| model | Shoal samples/s | PyTorch samples/s | Shoal / PyTorch | Shoal test acc | PyTorch test acc "
          f"| Shoal range | PyTorch range |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m, s, t, sa, ta, smin, smax, tmin, tmax in rows:
        print(f"| {m} | {s:,.0f} | {t:,.0f} | **{s / t:.2f}×** | {100 * sa:.2f}% | {100 * ta:.2f}% "
              f"| {smin:,.0f}–{smax:,.0f} | {tmin:,.0f}–{tmax:,.0f} |")


if __name__ == "__main__":
    main()
