#!/usr/bin/python3
"""Input pipeline throughput: Shoal's BatchLoader vs torchvision's ImageFolder + DataLoader.

Makes a folder of JPEGs a few hundred pixels a side from Fashion-MNIST (upscaled, tinted with a
random colour per image, light noise so the files compress like photographs: about 400 x 300,
quality 90), then measures decoded and augmented images per second into ready batches of 64 on
both sides with the same transforms — RandomResizedCrop(224), RandomHorizontalFlip, normalise —
and the same number of workers (1 and 2): Shoal's data.threads decode threads
(bench/input_pipeline.cc, no model), torchvision's DataLoader num_workers processes (PIL with
libjpeg-turbo, Debian's python3-torchvision). Runs are interleaved (Shoal, torchvision, Shoal,
...) and the table shows medians; the first 3 batches of each run are not timed.

Then a training run: `cnn` on a PNG folder copy of Fashion-MNIST (written by `shoal data
write`), 2 compute threads, data.threads = 1, one epoch: the data wait as a share of step time,
from the epoch event of metrics.file.

    bench/input_pipeline.py [--runs 5] [--batches 40] [--images 4000] [--build build]
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile

from torch_peer import DATA, ROOT, idx, machine, torch_env

TORCH_WORKER = r"""
import json, sys, time
import torch, torchvision
from torchvision import transforms
root, workers, batches, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(1)
t = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
ds = torchvision.datasets.ImageFolder(root + "/train", transform=t)
loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, prefetch_factor=4,
                                     persistent_workers=False)
it = iter(loader)
for _ in range(3):
    next(it)
start = time.perf_counter()
images = 0
for _ in range(batches):
    x, y = next(it)
    images += x.shape[0]
seconds = time.perf_counter() - start
print(json.dumps({"workers": workers, "images": images, "seconds": seconds, "images_per_second": images / seconds}))
"""


def make_jpeg_folder(root, images):
    """Fashion-MNIST, upscaled to about 400 x 300 and tinted, as JPEGs in class folders."""
    from PIL import Image
    import numpy as np
    xs, ys = idx(os.path.join(DATA, "train-images-idx3-ubyte.gz")), idx(os.path.join(DATA, "train-labels-idx1-ubyte.gz"))
    rng = np.random.default_rng(7)
    for c in range(10):
        os.makedirs(os.path.join(root, "train", str(c)), exist_ok=True)
    for i in range(images):
        g = Image.fromarray(xs[i]).resize((int(rng.integers(360, 440)), int(rng.integers(280, 340))), Image.BICUBIC)
        a = np.asarray(g, dtype=np.float32)[:, :, None] / 255.0
        tint = rng.uniform(0.3, 1.0, size=3)
        background = rng.uniform(0, 80, size=3)
        rgb = background + a * (255 - background) * tint + rng.normal(0, 6, size=a.shape[:2] + (3,))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(
            os.path.join(root, "train", str(int(ys[i])), f"{i:06d}.jpg"), quality=90)
    os.symlink("train", os.path.join(root, "val"))  # Shoal opens an evaluation set too; it is not read


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    bench = os.path.join(args.build, "bench", "shoal_input_bench")
    shoal = os.path.join(args.build, "shoal")
    with tempfile.TemporaryDirectory(prefix="shoal-input-bench-") as tmp:
        make_jpeg_folder(tmp, args.images)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs]
        print(f"# {machine()}")
        print(f"# {len(sizes)} JPEGs, median {statistics.median(sizes) / 1024:.0f} KiB; batch 64, "
              f"RandomResizedCrop(224) + flip + normalise; {args.batches} timed batches per run, "
              f"{args.runs} interleaved runs, medians")
        print()
        print("| workers | Shoal images/s | torchvision images/s | Shoal / torchvision |")
        print("| ---: | ---: | ---: | ---: |")
        for workers in (1, 2):
            ours, theirs = [], []
            for _ in range(args.runs):
                ours.append(run_json([bench, tmp, str(workers), str(args.batches), "64", "224"])["images_per_second"])
                theirs.append(run_json([sys.executable, "-c", TORCH_WORKER, tmp, str(workers), str(args.batches), "64",
                                        "224"], env=torch_env(1))["images_per_second"])
            o, t = statistics.median(ours), statistics.median(theirs)
            print(f"| {workers} | {o:.0f} | {t:.0f} | {o / t:.2f}x |")
        if args.skip_training:
            return
        png = os.path.join(tmp, "fmnist-png")
        subprocess.run([shoal, "data", "write", os.path.join(ROOT, "examples", "fashion_mnist_cnn.ini"), "folder", png,
                        "png"], check=True, capture_output=True)
        metrics = os.path.join(tmp, "metrics.jsonl")
        subprocess.run([shoal, "train", os.path.join(ROOT, "examples", "fashion_mnist_cnn.ini"), "--data.format=folder",
                        f"--data.dir={png}", "--data.threads=1", "--threads=2", "--train.epochs=1", "--progress=off",
                        f"--metrics.file={metrics}"], check=True, capture_output=True)
        epoch = [json.loads(l) for l in open(metrics) if '"epoch"' in l and '"event"' in l]
        epoch = [e for e in epoch if e.get("event") == "epoch"][-1]
        print()
        print("| training run | samples/s | step time, s | data wait, s | data wait / step time |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| cnn, Fashion-MNIST PNG folder, threads = 2, data.threads = 1 | {epoch['samples_per_second']:.0f} | "
              f"{epoch['seconds']:.1f} | {epoch['data_wait_seconds']:.2f} | "
              f"{100 * epoch['data_wait_seconds'] / epoch['seconds']:.1f}% |")


if __name__ == "__main__":
    main()
