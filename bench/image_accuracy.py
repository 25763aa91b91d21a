#!/usr/bin/python3
"""Image data sets train like the IDX files: Fashion-MNIST as a PNG folder, a JPEG folder
(quality 95) and PNG tar shards (5,000 shuffled samples each), all written by `shoal data
write`, trained with the same seed as the IDX files: `cnn`, 10 epochs on all 60,000 images,
asynchronously (examples/fashion_mnist_async.ini: 2 servers, 2 workers) and sync
(examples/fashion_mnist_sync.ini: 2 ranks). Prints one table of final test accuracies and each
copy's difference from the IDX run of the same strategy.

    bench/image_accuracy.py [--build build] [--epochs 10] [--strategies async,sync]

Async runs are not deterministic (which worker trains which range, staleness): the IDX run
itself moves by a few tenths of a point from run to run.
"""
import argparse
import json
import os
import subprocess
import tempfile

from torch_peer import ROOT, machine


def final_accuracy(shoal, job, extra, metrics):
    subprocess.run([shoal, "launch", os.path.join(ROOT, "examples", job), "--local", f"--metrics.file={metrics}"] + extra,
                   check=True, capture_output=True)
    end = [json.loads(l) for l in open(metrics) if '"event": "end"' in l]
    return end[-1]["final_test_accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--strategies", default="async,sync")
    args = ap.parse_args()
    shoal = os.path.join(args.build, "shoal")
    job = os.path.join(ROOT, "examples", "fashion_mnist_cnn.ini")
    with tempfile.TemporaryDirectory(prefix="shoal-image-accuracy-") as tmp:
        for how, codec, name in [("folder", "png", "png"), ("folder", "jpeg", "jpg"), ("tar", "png", "tar")]:
            cmd = [shoal, "data", "write", job, how, os.path.join(tmp, name), codec] + (["5000"] if how == "tar" else [])
            subprocess.run(cmd, check=True, capture_output=True)
        variants = [("IDX files", []),
                    ("PNG folder", ["--data.format=folder", f"--data.dir={tmp}/png"]),
                    ("JPEG folder (quality 95)", ["--data.format=folder", f"--data.dir={tmp}/jpg"]),
                    ("PNG tar shards", ["--data.format=tar", f"--data.train={tmp}/tar/train-{{000000..000011}}.tar",
                                        f"--data.test={tmp}/tar/test-{{000000..000001}}.tar"])]
        strategies = args.strategies.split(",")
        jobs = {"async": "fashion_mnist_async.ini", "sync": "fashion_mnist_sync.ini"}
        results = {}
        for s in strategies:
            for label, extra in variants:
                metrics = os.path.join(tmp, f"{s}-{len(results)}.jsonl")
                results[(s, label)] = final_accuracy(shoal, jobs[s], extra + [f"--train.epochs={args.epochs}"], metrics)
        print(f"# {machine()}; cnn, {args.epochs} epochs, all 60,000 training images, seed 1")
        print()
        print("| data | " + " | ".join(f"{s}: accuracy | {s}: vs IDX" for s in strategies) + " |")
        print("| --- | " + " | ".join("---: | ---:" for _ in strategies) + " |")
        for label, _ in variants:
            cells = []
            for s in strategies:
                a, base = results[(s, label)], results[(s, "IDX files")]
                cells += [f"{100 * a:.2f}%", "—" if label == "IDX files" else f"{100 * (a - base):+.2f}"]
            print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
