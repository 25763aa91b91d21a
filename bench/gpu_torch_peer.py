#!/usr/bin/env python3
"""GPU training throughput, Shoal vs PyTorch: the PyTorch side and the comparison that
bench/gpu.sh prints. Needs a machine with an NVIDIA GPU and PyTorch built for CUDA.

    bench/gpu_torch_peer.py compare --shoal build/shoal [--shoal-ld-path DIRS] [--runs 5]
                                    [--models cnn,resnet20] [--batch 256] [--tf32 true]
                                    [--data DIR] [--no-compile]
    bench/gpu_torch_peer.py run --model cnn [--batch 256] [--tf32 true] [--compile] [--data DIR]

`compare` trains each model for two epochs of Fashion-MNIST (60,000 samples) with
`shoal train --device=cuda` and with PyTorch on the same GPU, N times each, interleaved (drift in
the machine's state hits every side alike), and prints one markdown table of median training
samples/s and the ratio Shoal / PyTorch eager (target: 1.2x). Both sides report the SECOND
epoch only, so start-up, cuDNN algorithm search (PyTorch: cudnn.benchmark autotuning; Shoal:
its first-use algorithm choice), the caching allocators' first allocations and torch.compile's
compilation are all excluded. Evaluation is excluded on both sides.

Same work on both sides: the model (Shoal's zoo, models/model.cc; `cnn` from
bench/torch_peer.py, `resnet20` below), batch, data (the gzip IDX files, normalised with the
training set's mean and standard deviation), SGD lr 0.01 momentum 0.9, a fresh shuffle per epoch,
the last smaller batch trained, loss and accuracy counted every step. TF32 as Shoal's
cuda.tf32 (default true: PyTorch's cuDNN and matmul TF32 allowed).

PyTorch gets its best eager settings: the whole training set preloaded to the GPU as one tensor
and indexed per batch on the GPU (no DataLoader), torch.backends.cudnn.benchmark = True, the fused
SGD kernel, zero_grad(set_to_none=True), loss and accuracy summed on the device and read once
per epoch (no per-step sync), timed between torch.cuda.synchronize() calls. Shoal gathers each
batch on the host from the uint8 images, copies it up through pinned buffers (double-buffered),
and reads the loss back every step; its samples/s is the trainer's own (the sum of its step
times, worker/trainer.cc). The optional "compiled" column is torch.compile(model) (default mode,
dynamic=False) with the same loop.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
DEFAULT_DATA = os.environ.get("SHOAL_DATA_DIR") or "/usr/share/datasets/fashion-mnist"
TARGET = 1.2


def make_resnet20(in_channels, classes=10):
    """The PyTorch twin of Shoal's `resnet20` (models/model.cc): conv3x3 16 (no bias), BN, ReLU,
    3 stages x 3 basic blocks of 16/32/64 channels (stride 2 entering stages 2 and 3, 1x1
    conv + BN shortcut where the shape changes), global average pool, linear."""
    import torch.nn as nn

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.main = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                                      nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(cout))
            self.shortcut = nn.Identity()
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.main(x) + self.shortcut(x))

    layers = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            layers.append(BasicBlock(cin, width, 2 if stage > 0 and block == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes)]
    return nn.Sequential(*layers)


def make_model(name):
    if name == "resnet20":
        return make_resnet20(1)
    import torch_peer
    return torch_peer.make_model(name)  # mlp, cnn


# ---------------------------------------------------------------------------------------------
# One PyTorch run (a fresh process each: `gpu_torch_peer.py run ...`).

def torch_run(a):
    import time
    import torch
    import torch.nn as nn
    import torch_peer

    if not torch.cuda.is_available():
        sys.exit("gpu_torch_peer.py: PyTorch sees no CUDA GPU (torch.cuda.is_available() is False)")
    dev = torch.device("cuda")
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.set_float32_matmul_precision("high" if a.tf32 else "highest")

    xtr, ytr, xte, yte = torch_peer.load_fashion_mnist(a.data)
    xtr, ytr, xte, yte = xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev)
    model = make_model(a.model).to(dev)
    try:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    except (TypeError, RuntimeError):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step_model = torch.compile(model, dynamic=False) if a.compile else model
    loss_fn = nn.CrossEntropyLoss()
    n = len(xtr)

    def epoch():
        model.train()
        order = torch.randperm(n, device=dev)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.int64)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, n, a.batch):
            idx = order[i:i + a.batch]
            x, y = xtr[idx], ytr[idx]
            opt.zero_grad(set_to_none=True)
            logits = step_model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return n / seconds, loss_sum.item() / n, correct.item() / n

    warm = epoch()  # warm-up: autotuning, allocator, compilation
    rate, loss, acc = epoch()
    print(json.dumps({"samples_per_second": rate, "warmup_samples_per_second": warm[0], "train_loss": loss,
                      "train_accuracy": acc, "test_accuracy": torch_peer.test_accuracy(model, xte, yte),
                      "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                      "compiled": bool(a.compile)}))


# ---------------------------------------------------------------------------------------------
# The comparison.

def run_torch(a, model, seed, compiled):
    argv = [sys.executable, os.path.abspath(__file__), "run", "--model", model, "--batch", str(a.batch),
            "--tf32", "true" if a.tf32 else "false", "--seed", str(seed), "--data", a.data]
    if compiled:
        argv.append("--compile")
    # PyTorch keeps the caller's library path: the .so files carried for Shoal (SHOAL_LIBS) must
    # not replace the CUDA libraries PyTorch was built with.
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError((p.stderr or p.stdout).strip().splitlines()[-1] if (p.stderr or p.stdout).strip()
                           else f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_shoal(a, model, seed):
    env = dict(os.environ)
    if a.shoal_ld_path:
        env["LD_LIBRARY_PATH"] = a.shoal_ld_path + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = os.path.join(tmp, "m.jsonl")
        argv = [a.shoal, "train", os.path.join(ROOT, "examples/fashion_mnist_cnn.ini"), f"--model={model}",
                f"--device={a.shoal_device}", f"--cuda.tf32={'true' if a.tf32 else 'false'}", "--train.epochs=2",
                f"--train.batch_size={a.batch}", f"--train.seed={seed}", "--optimizer.lr=0.01",
                "--optimizer.momentum=0.9", "--lr.schedule=constant", "--lr.warmup_epochs=0", f"--data.dir={a.data}",
                "--progress=off", "--log.level=warn", f"--metrics.file={metrics}"]
        p = subprocess.run(argv, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            lines = (p.stderr + p.stdout).strip().splitlines()
            raise RuntimeError(f"shoal exited {p.returncode}: {lines[-1] if lines else ''}")
        epochs = [json.loads(line) for line in open(metrics) if '"event": "epoch"' in line]
        if len(epochs) != 2:
            raise RuntimeError(f"shoal wrote {len(epochs)} epoch lines, expected 2")
        return epochs[1]


def shoal_version(a):
    env = dict(os.environ)
    if a.shoal_ld_path:
        env["LD_LIBRARY_PATH"] = a.shoal_ld_path + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    p = subprocess.run([a.shoal, "version"], env=env, capture_output=True, text=True)
    return " / ".join(p.stdout.strip().splitlines())


def fmt(x):
    return f"{x:,.0f}" if x is not None else "n/a"


def compare(a):
    rows, notes = [], []
    torch_version = gpu = "?"
    for model in a.models.split(","):
        rates = {"shoal": [], "eager": [], "compiled": []}
        acc = {"shoal": [], "eager": []}
        compile_error = None
        for r in range(a.runs):
            seed = r + 1
            s = run_shoal(a, model, seed)
            rates["shoal"].append(s["samples_per_second"])
            acc["shoal"].append(s["test_accuracy"])
            t = run_torch(a, model, seed, compiled=False)
            torch_version, gpu = t["torch"], t["gpu"]
            rates["eager"].append(t["samples_per_second"])
            acc["eager"].append(t["test_accuracy"])
            if a.compile and compile_error is None:
                try:
                    rates["compiled"].append(run_torch(a, model, seed, compiled=True)["samples_per_second"])
                except RuntimeError as e:  # no Triton or compiler here: the column says so
                    compile_error = str(e)
                    rates["compiled"] = []
            print(f"{model} run {r + 1}/{a.runs}: shoal {s['samples_per_second']:,.0f}, "
                  f"eager {t['samples_per_second']:,.0f}"
                  + (f", compiled {rates['compiled'][-1]:,.0f}" if rates["compiled"] else "") + " samples/s",
                  file=sys.stderr, flush=True)
        med = {k: statistics.median(v) if v else None for k, v in rates.items()}
        if compile_error:
            notes.append(f"{model}: torch.compile failed ({compile_error})")
        rows.append((model, med, rates, statistics.median(acc["shoal"]), statistics.median(acc["eager"])))

    print(f"# GPU training throughput, Fashion-MNIST, batch {a.batch}, 2nd epoch of 2 (warm-up excluded), "
          f"TF32 {'on' if a.tf32 else 'off'}, median of {a.runs} interleaved runs; {gpu}; PyTorch {torch_version}; "
          f"{shoal_version(a)}")
    print("| model | Shoal samples/s | PyTorch eager samples/s | Shoal / eager (target 1.2×) "
          "| PyTorch compiled samples/s | Shoal / compiled | Shoal test acc | PyTorch test acc "
          "| Shoal range | eager range |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    missed = []
    for model, med, rates, sacc, tacc in rows:
        ratio = med["shoal"] / med["eager"]
        if ratio < TARGET:
            missed.append(f"{model} {ratio:.2f}×")
        vs_compiled = f"{med['shoal'] / med['compiled']:.2f}×" if med["compiled"] else "n/a"
        print(f"| {model} | {fmt(med['shoal'])} | {fmt(med['eager'])} | **{ratio:.2f}×** {'✓' if ratio >= TARGET else '✗'} "
              f"| {fmt(med['compiled'])} | {vs_compiled} | {100 * sacc:.2f}% | {100 * tacc:.2f}% "
              f"| {fmt(min(rates['shoal']))}–{fmt(max(rates['shoal']))} "
              f"| {fmt(min(rates['eager']))}–{fmt(max(rates['eager']))} |")
    for n in notes:
        print(f"\nnote: {n}")
    print(f"\ntarget Shoal / PyTorch eager >= {TARGET}×: " + ("met for every model" if not missed
                                                           else "NOT met for " + ", ".join(missed)))


def boolean(text):
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"'{text}' is not true/false")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="Shoal vs PyTorch, one markdown table")
    c.add_argument("--shoal", default=os.path.join(ROOT, "build/shoal"))
    c.add_argument("--shoal-ld-path", default="", help="prepended to LD_LIBRARY_PATH for shoal only")
    c.add_argument("--shoal-device", default="cuda", help="device for shoal (cpu only to check this script)")
    c.add_argument("--runs", type=int, default=5)
    c.add_argument("--models", default="cnn,resnet20")
    c.add_argument("--batch", type=int, default=256)
    c.add_argument("--tf32", type=boolean, default=True)
    c.add_argument("--data", default=DEFAULT_DATA)
    c.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile column")
    r = sub.add_parser("run", help="one PyTorch run, one JSON line")
    r.add_argument("--model", default="cnn")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--tf32", type=boolean, default=True)
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--data", default=DEFAULT_DATA)
    r.add_argument("--compile", action="store_true")
    a = ap.parse_args()
    if a.command == "compare":
        compare(a)
    else:
        torch_run(a)


if __name__ == "__main__":
    main()
