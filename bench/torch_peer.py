"""PyTorch peer for the training benchmarks: what bench/train_throughput.py and
bench/sync_throughput.py share.

The same gzip IDX files, normalisation (training set mean and standard deviation) and layers as
Shoal's model zoo (models/model.cc), and PyTorch's best settings on this machine:
torch.set_num_threads(N) with OPENBLAS_NUM_THREADS=1 (Debian's build otherwise runs OpenBLAS
threads against its own), the data preloaded as one tensor and indexed per batch (no DataLoader).

torch and numpy are imported inside the functions that need them, so a driver can import this
module without paying for torch; the environment of torch_env() must be set before torch is
imported, i.e. in a fresh process.
"""
import gzip
import os
import platform

DATA = "/usr/share/datasets/fashion-mnist"
BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)


def torch_env(threads):
    """Environment for a PyTorch process that runs `threads` intra-op threads."""
    return dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS=str(threads))


def machine():
    """'CPU model, N cores' of this host."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def idx(path):
    """A gzip IDX file (big-endian dims, unsigned bytes) as a numpy array."""
    import numpy as np
    raw = gzip.open(path).read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist(data=DATA, train_limit=0):
    """(xtr, ytr, xte, yte) as torch tensors, images N x 1 x 28 x 28 normalised with the training
    set's mean and standard deviation. train_limit > 0 keeps the first train_limit training
    samples, as Shoal's --data.train_limit does."""
    import numpy as np
    import torch
    xtr = idx(f"{data}/train-images-idx3-ubyte.gz").astype(np.float32) / 255
    ytr = idx(f"{data}/train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = idx(f"{data}/t10k-images-idx3-ubyte.gz").astype(np.float32) / 255
    yte = idx(f"{data}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    if train_limit > 0:
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]
    mean, std = xtr.mean(), xtr.std()
    xtr = torch.from_numpy((xtr - mean) / std).unsqueeze(1).contiguous()
    xte = torch.from_numpy((xte - mean) / std).unsqueeze(1).contiguous()
    return xtr, torch.from_numpy(np.ascontiguousarray(ytr)), xte, torch.from_numpy(yte)


def make_model(name):
    """The PyTorch twin of Shoal's `mlp` or `cnn` (models/model.cc)."""
    import torch.nn as nn
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                             nn.Linear(128, 10))
    if name == "cnn":
        return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    raise ValueError(f"no PyTorch twin for model {name!r} (mlp, cnn)")


def test_accuracy(model, xte, yte):
    """Accuracy on the test set, in batches of 1000."""
    import torch
    model.eval()
    with torch.no_grad():
        correct = sum((model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
                      for i in range(0, len(xte), 1000))
    return correct / len(xte)
