#!/usr/bin/python3
"""The peer of bench/serve_throughput.py: a Flask app under gunicorn, the stack the seeds serve
their models with, serving the SAME weights as `shoal serve` with PyTorch 1.13 in eval mode.

Speaks the request and reply bodies of KServe v2 `POST /v2/models/NAME/infer` that Shoal speaks
(serve/protocol.h) for FP32 inputs: JSON tensors, and the binary tensor data extension
(`Inference-Header-Content-Length` and `parameters.binary_data_size`, the raw little-endian
float32 bytes after the JSON header). The reply has the same outputs as Shoal's: "logits" and
"probabilities" (FP32 [N, classes]) and "label" (BYTES [N]). Also `GET /v2/health/ready`.

The model is `cnn` or `resnet20` of Shoal's zoo (models/zoo/*.yaml) as torch modules whose
parameter names are Shoal's (batch norm's gamma/beta are torch's weight/bias), loaded from
  - an ONNX file written by `shoal export` (initializer names = Shoal's parameter names), or
  - a checkpoint: a ckpt-<step> directory or a checkpoint.dir (its LATEST), read from the range
    files and `buffers` as docs/checkpoint-format.md describes them.

Run it as the bench does (one sync worker per core, one torch thread per worker):
  PEER_MODEL=/tmp/cnn.onnx gunicorn -w $(nproc) -b 127.0.0.1:8081 --chdir bench serve_flask_peer:app
or `bench/serve_flask_peer.py MODEL [--port 8081] [--workers N]`, which runs that gunicorn.
"""
import json
import os
import struct
import sys

import numpy as np

ARCHITECTURES = ("cnn", "resnet20")


# ---- the models -----------------------------------------------------------------------------

def build_module(arch, input_shape, classes, bn_eps=1e-5):
    """The torch module of a zoo model, parameter names as Shoal's (models/zoo/ARCH.yaml)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    c, h, w = input_shape

    class Cnn(nn.Module):  # models/zoo/cnn.yaml
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
            self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
            self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 128)
            self.fc2 = nn.Linear(128, classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            return self.fc2(F.relu(self.fc1(x)))

    class Shortcut(nn.Module):  # shortcut.conv + shortcut.bn
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=bn_eps)

        def forward(self, x):
            return self.bn(self.conv(x))

    class Basic(nn.Module):  # models/zoo/resnet20.yaml, block `basic`
        def __init__(self, cin, cout, stride, projection):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout, eps=bn_eps)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=bn_eps)
            self.shortcut = Shortcut(cin, cout, stride) if projection else None

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return F.relu(y + (self.shortcut(x) if self.shortcut is not None else x))

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(c, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16, eps=bn_eps)
            cin = 16
            for i, cout in enumerate((16, 32, 64)):
                blocks = []
                for b in range(3):
                    first = b == 0 and i > 0
                    blocks.append(Basic(cin, cout, 2 if first else 1, first))
                    cin = cout
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(64, classes)

        def forward(self, x):
            x = F.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
            return self.fc(x)

    if arch == "cnn":
        return Cnn()
    if arch == "resnet20":
        return ResNet20()
    raise SystemExit(f"serve_flask_peer: model '{arch}' is not one of {', '.join(ARCHITECTURES)}")


def torch_name(shoal_name):
    """Shoal's parameter or buffer name as the torch module's state_dict names it."""
    if shoal_name.endswith(".gamma"):
        return shoal_name[: -len(".gamma")] + ".weight"
    if shoal_name.endswith(".beta"):
        return shoal_name[: -len(".beta")] + ".bias"
    return shoal_name


def read_onnx(path):
    """(meta, {shoal name: array}, batch-norm epsilon) of an ONNX file `shoal export` wrote."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    meta = {
        "name": props["shoal.name"],
        "input": tuple(int(d) for d in props["shoal.input"].split("x")),
        "classes": int(props["shoal.classes"]),
        "class_names": json.loads(props.get("shoal.class_names", "[]")),
        "step": int(props.get("shoal.step", "0")),
    }
    tensors = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in model.graph.initializer}
    eps = 1e-5
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            for a in node.attribute:
                if a.name == "epsilon":
                    eps = float(helper.get_attribute_value(a))
    return meta, tensors, eps


def read_checkpoint(path):
    """(meta, {shoal name: array}, epsilon) of a checkpoint (docs/checkpoint-format.md)."""
    latest = os.path.join(path, "LATEST")
    if os.path.isfile(latest) and not os.path.isfile(os.path.join(path, "MANIFEST")):
        with open(latest) as f:
            path = os.path.join(path, f.read().strip())
    meta = {"class_names": [], "step": int(os.path.basename(os.path.normpath(path)).split("-")[-1])}
    params, buffers = [], []
    with open(os.path.join(path, "layout")) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            if w[0] == "model":
                meta["name"] = w[1]
            elif w[0] == "input":
                meta["input"] = tuple(int(d) for d in w[1].split("x"))
            elif w[0] == "classes":
                meta["classes"] = int(w[1])
            elif w[0] == "class":
                meta["class_names"].append(" ".join(w[2:]))
            elif w[0] in ("param", "buffer"):
                entry = (w[1], int(w[2]), int(w[3]), tuple(int(d) for d in w[4].split("x")))
                (params if w[0] == "param" else buffers).append(entry)
    # The parameter arena from its range files: header length at offset 12, begin/end at 24/32.
    total = max(end for _, _, end, _ in params)
    arena = np.full(total, np.nan, np.float32)
    for name in os.listdir(path):
        if not name.startswith("params."):
            continue
        with open(os.path.join(path, name), "rb") as f:
            head = f.read(48)
            if head[:8] != b"SHOALRNG":
                raise SystemExit(f"{path}/{name}: not a range file")
            header_len = struct.unpack_from("<I", head, 12)[0]
            begin, end = struct.unpack_from("<qq", head, 24)
            f.seek(header_len)
            arena[begin:end] = np.frombuffer(f.read(4 * (end - begin)), "<f4")
    tensors = {n: arena[b:e].reshape(s).copy() for n, b, e, s in params}
    if buffers:
        blob = np.fromfile(os.path.join(path, "buffers"), "<f4")
        tensors.update({n: blob[b:e].reshape(s).copy() for n, b, e, s in buffers})
    return meta, tensors, 1e-5


def load_model(source):
    """(meta, torch module in eval mode) with the weights of `source` (.onnx or checkpoint)."""
    import torch

    meta, tensors, eps = (read_onnx if source.endswith(".onnx") else read_checkpoint)(source)
    module = build_module(meta["name"], meta["input"], meta["classes"], eps)
    state = module.state_dict()
    wanted = {k for k in state if not k.endswith("num_batches_tracked")}
    given = {torch_name(k): v for k, v in tensors.items()}
    if set(given) != wanted:
        raise SystemExit(f"serve_flask_peer: {source} does not fit the torch '{meta['name']}': "
                         f"missing {sorted(wanted - set(given))}, extra {sorted(set(given) - wanted)}")
    for k, v in given.items():
        if tuple(state[k].shape) != v.shape:
            raise SystemExit(f"serve_flask_peer: {k}: shape {v.shape}, the module's {tuple(state[k].shape)}")
        state[k] = torch.from_numpy(v)
    module.load_state_dict(state)
    module.eval()
    return meta, module


# ---- the app ----------------------------------------------------------------------------------

def create_app(source, name=None):
    import torch
    from flask import Flask, Response, request

    torch.set_num_threads(1)  # one sync worker per core, one thread each
    meta, module = load_model(source)
    model_name = name or meta["name"]
    shape = [meta["input"][0], meta["input"][1], meta["input"][2]]
    classes = meta["classes"]
    names = meta["class_names"] or [str(c) for c in range(classes)]
    app = Flask(__name__)

    def error(status, message):
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    def health():
        return Response('{"ready": true}', mimetype="application/json")

    @app.post("/v2/models/<name>/infer")
    def infer(name):
        if name != model_name:
            return error(404, f"no such model: {name}")
        body = request.get_data()
        header_length = request.headers.get("Inference-Header-Content-Length")
        try:
            json_size = int(header_length) if header_length else len(body)
            doc = json.loads(body[:json_size])
            t = doc["inputs"][0]
            if t.get("name") != "input" or t.get("datatype") != "FP32":
                return error(400, 'inputs[0]: expected {"name": "input", "datatype": "FP32"}')
            n = int(t["shape"][0])
            if list(t["shape"][1:]) != shape or n < 1:
                return error(400, f"inputs[0].shape: {t['shape']} does not fit the model: expected {[-1] + shape}")
            binary_size = (t.get("parameters") or {}).get("binary_data_size")
            if binary_size is not None:
                if binary_size != len(body) - json_size:
                    return error(400, "inputs[0].parameters.binary_data_size does not match the bytes after the header")
                x = np.frombuffer(body, "<f4", offset=json_size)
            else:
                x = np.asarray(t["data"], np.float32)
            x = x.reshape([n] + shape)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            return error(400, f"bad request: {e}")
        if not np.isfinite(x).all():
            return error(400, "inputs[0].data: a value is not finite")
        with torch.inference_mode():
            logits = module(torch.from_numpy(x.copy()))
            probs = torch.softmax(logits, 1)
        labels = [names[i] for i in logits.argmax(1).tolist()]
        reply = {
            "model_name": model_name,
            "model_version": str(meta["step"]),
            "outputs": [
                {"name": "logits", "datatype": "FP32", "shape": [n, classes], "data": logits.flatten().tolist()},
                {"name": "probabilities", "datatype": "FP32", "shape": [n, classes], "data": probs.flatten().tolist()},
                {"name": "label", "datatype": "BYTES", "shape": [n], "data": labels},
            ],
        }
        if "id" in doc:
            reply["id"] = doc["id"]
        return Response(json.dumps(reply), mimetype="application/json")

    return app


# gunicorn imports this module in each worker: the model comes from the environment.
if os.environ.get("PEER_MODEL"):
    app = create_app(os.environ["PEER_MODEL"], os.environ.get("PEER_NAME") or None)


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an ONNX file from `shoal export`, or a checkpoint directory")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--name", default="", help="the model's name in URLs (default: the model's own)")
    a = p.parse_args()
    env = dict(os.environ, PEER_MODEL=os.path.abspath(a.model), PEER_NAME=a.name, OMP_NUM_THREADS="1")
    os.execvpe("gunicorn", ["gunicorn", "-w", str(a.workers), "-k", "sync", "-b", f"127.0.0.1:{a.port}",
                            "--chdir", os.path.dirname(os.path.abspath(__file__)), "serve_flask_peer:app"], env)


if __name__ == "__main__":
    sys.exit(main())
