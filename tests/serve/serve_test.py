#!/usr/bin/env python3
"""`shoal serve` as its clients meet it: a real server process on loopback, a model trained by a
real local job, every path of KServe v2 and TF Serving REST and every error case, read with a
plain HTTP client. Also: SIGTERM drains, a checkpoint swapped in under load loses no request,
PORT is honoured, and 1,000 idle or byte-at-a-time connections delay neither the server's
liveness probe nor the /healthz of any training role.

  serve_test.py SHOAL_BINARY SOURCE_DIR WORK_DIR
"""
import base64
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

SHOAL, SOURCE, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
JOB = os.path.join(SOURCE, "examples", "fashion_mnist_async.ini")
IMAGES = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte"
TRAIN = ["--data.train_limit=6000", "--data.test_limit=1000", "--cluster.workers=1",
         "--cluster.servers=1", "--progress=off", "--log.level=warn"]
CKPT = os.path.join(WORK, "ckpt")


def train(epochs=1):
    r = subprocess.run([SHOAL, "launch", JOB, "--local", "--checkpoint.dir=" + CKPT, f"--train.epochs={epochs}"] + TRAIN,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    if r.returncode != 0:
        raise AssertionError("training failed:\n" + r.stdout[-3000:])


def test_images(n):
    """The first n Fashion-MNIST test images as 28x28 byte strings (the IDX file, raw or gzip)."""
    import gzip
    path = IMAGES if os.path.exists(IMAGES) else IMAGES + ".gz"
    with (open(path, "rb") if path == IMAGES else gzip.open(path, "rb")) as f:
        data = f.read(16 + 784 * n)
    return [data[16 + 784 * i:16 + 784 * (i + 1)] for i in range(n)]


def png(pixels, w=28, h=28):
    """A grayscale PNG of raw pixels (zlib, no external library)."""
    import zlib
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff)
    raw = b"".join(b"\x00" + pixels[y * w:(y + 1) * w] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Server:
    """A `shoal serve` process; port from its first stdout line."""

    def __init__(self, model, *options, env=None):
        self.proc = subprocess.Popen([SHOAL, "serve", model, "--serve.host=127.0.0.1"] + list(options),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, **(env or {})))
        line = self.proc.stdout.readline()
        m = re.match(r"serving '([^']+)' on port (\d+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError("serve did not start: " + line + self.proc.stderr.read()[-3000:])
        self.name, self.port = m.group(1), int(m.group(2))
        self.log = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()

    def request(self, method, path, body=None, headers=None, timeout=30):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def json(self, method, path, doc=None, **kw):
        status, headers, body = self.request(method, path, None if doc is None else json.dumps(doc).encode(), **kw)
        return status, headers, json.loads(body) if body else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def v2_fp32(x, n=1):
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 1, 28, 28], "data": x}]}


def normalise(pixels, meta):
    mean, std = meta["parameters"]["mean"][0], meta["parameters"]["std"][0]
    import numpy as np
    p = np.frombuffer(pixels, dtype=np.uint8).astype(np.float32)
    return (p * np.float32(1 / (255 * std)) - np.float32(mean / std)).tolist()


def setUpModule():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    train()


class Protocols(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = Server(CKPT, "--serve.port=0", "--serve.max_delay_us=500")
        cls.images = test_images(4)
        _, _, cls.meta = cls.s.json("GET", "/v2/models/cnn")

    @classmethod
    def tearDownClass(cls):
        assert cls.s.stop() == 0

    def test_health_and_metadata(self):
        s = self.s
        self.assertEqual(s.name, "cnn")
        for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/cnn/ready", "/healthz", "/readyz"]:
            self.assertEqual(s.request("GET", path)[0], 200, path)
        status, _, doc = s.json("GET", "/v2")
        self.assertEqual((status, doc["name"]), (200, "shoal"))
        self.assertIn("binary_tensor_data", doc["extensions"])
        self.assertEqual(self.meta["inputs"], [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}])
        self.assertEqual([o["name"] for o in self.meta["outputs"]], ["logits", "probabilities", "label"])
        step = self.meta["versions"][0]
        status, _, doc = s.json("GET", "/v1/models/cnn")
        self.assertEqual(doc["model_version_status"][0]["version"], step)
        self.assertEqual(doc["model_version_status"][0]["state"], "AVAILABLE")

    def test_the_same_prediction_through_every_encoding(self):
        s, px = self.s, self.images[0]
        status, _, ref = s.json("POST", "/v2/models/cnn/infer", v2_fp32(normalise(px, self.meta)))
        self.assertEqual(status, 200, ref)
        logits = ref["outputs"][0]["data"]
        self.assertEqual(ref["outputs"][0]["shape"], [1, 10])
        probs = ref["outputs"][1]["data"]
        self.assertAlmostEqual(sum(probs), 1.0, places=5)
        label = ref["outputs"][2]["data"][0]
        self.assertEqual(label, str(max(range(10), key=lambda c: logits[c])))

        def same(got, what):
            self.assertEqual(len(got), 10, what)
            for a, b in zip(got, logits):
                self.assertLessEqual(abs(a - b), 1e-4 * max(1.0, abs(b)), what)

        # Nested data, UINT8 pixels, a base64 PNG (BYTES), and the binary extension for each.
        nested = normalise(px, self.meta)
        nested = [[[nested[r * 28:(r + 1) * 28] for r in range(28)]]]
        same(s.json("POST", "/v2/models/cnn/infer", v2_fp32(nested))[2]["outputs"][0]["data"], "nested FP32")
        u8 = {"inputs": [{"name": "input", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": list(px)}]}
        same(s.json("POST", "/v2/models/cnn/infer", u8)[2]["outputs"][0]["data"], "UINT8")
        b64 = base64.b64encode(png(px)).decode()
        by = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1], "data": [b64]}], "id": "req-7"}
        doc = s.json("POST", "/v2/models/cnn/infer", by)[2]
        same(doc["outputs"][0]["data"], "BYTES png")
        self.assertEqual(doc["id"], "req-7")
        # Binary FP32 in, binary out.
        import numpy as np
        blob = np.array(normalise(px, self.meta), dtype="<f4").tobytes()
        head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                       "parameters": {"binary_data_size": len(blob)}}],
                           "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
        status, headers, body = s.request("POST", "/v2/models/cnn/infer", head + blob,
                                          {"Inference-Header-Content-Length": str(len(head)),
                                           "Content-Type": "application/octet-stream"})
        self.assertEqual(status, 200, body[:300])
        n = int(headers["Inference-Header-Content-Length"])
        out = json.loads(body[:n])["outputs"]
        self.assertEqual(out[0]["parameters"]["binary_data_size"], 40)
        same(list(np.frombuffer(body[n:n + 40], dtype="<f4")), "binary FP32 out")
        # Binary BYTES in.
        enc = png(px)
        blob = struct.pack("<I", len(enc)) + enc
        head = json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(blob)}}]}).encode()
        status, _, body = s.request("POST", "/v2/models/cnn/infer", head + blob,
                                    {"Inference-Header-Content-Length": str(len(head))})
        same(json.loads(body)["outputs"][0]["data"], "binary BYTES")
        # TF Serving: instances (numbers and b64), inputs (list and named).
        doc = s.json("POST", "/v1/models/cnn:predict", {"instances": [nested[0], {"b64": b64}]})[2]
        same(doc["predictions"][0]["logits"], "tf instances numbers")
        same(doc["predictions"][1]["logits"], "tf instances b64")
        self.assertEqual(doc["predictions"][1]["label"], label)
        doc = s.json("POST", "/v1/models/cnn:predict", {"inputs": {"image": [{"b64": b64}]}})[2]
        same(doc["outputs"]["logits"][0], "tf inputs named")
        # `shoal predict` on the same PNG: the same class and score.
        path = os.path.join(WORK, "img0.png")
        with open(path, "wb") as f:
            f.write(enc)
        r = subprocess.run([SHOAL, "predict", CKPT, path, "--top", "3"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        line = json.loads(r.stdout.strip().splitlines()[0])
        self.assertEqual(line["class"], label)
        self.assertAlmostEqual(line["score"], max(probs), places=5)
        self.assertEqual(len(line["top"]), 3)

    def test_expect_100_continue_is_answered_before_the_body(self):
        body = json.dumps(v2_fp32(normalise(self.images[2], self.meta))).encode()
        c = socket.create_connection(("127.0.0.1", self.s.port), timeout=10)
        c.sendall(b"POST /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        self.assertTrue(c.recv(100).startswith(b"HTTP/1.1 100 Continue"))  # before any body byte was sent
        c.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = c.recv(65536)
            if not chunk:
                break
            reply += chunk
        c.close()
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:200])

    def test_batches_of_several_samples(self):
        xs = [normalise(p, self.meta) for p in self.images]
        flat = [v for x in xs for v in x]
        status, _, doc = self.s.json("POST", "/v2/models/cnn/infer", v2_fp32(flat, 4))
        self.assertEqual((status, doc["outputs"][0]["shape"]), (200, [4, 10]))
        one = self.s.json("POST", "/v2/models/cnn/infer", v2_fp32(xs[3]))[2]["outputs"][0]["data"]
        for a, b in zip(doc["outputs"][0]["data"][30:40], one):
            self.assertLessEqual(abs(a - b), 1e-4 * max(1.0, abs(b)))

    def test_every_bad_request_is_a_400_naming_the_field(self):
        s = self.s
        good = normalise(self.images[0], self.meta)
        cases = [
            ("malformed JSON", b'{"inputs": [', "malformed JSON"),
            ("not an object", b"[1, 2]", "JSON object"),
            ("no inputs", b"{}", "inputs"),
            ("wrong name", json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                                   "data": good}]}).encode(), "inputs[0].name"),
            ("wrong datatype", json.dumps({"inputs": [{"name": "input", "datatype": "INT64", "shape": [1, 1, 28, 28],
                                                       "data": good}]}).encode(), "[-1, 1, 28, 28]"),
            ("wrong shape", json.dumps(v2_fp32(good[:784 - 28], 1) | {"inputs": [
                {"name": "input", "datatype": "FP32", "shape": [1, 1, 27, 28], "data": good[:756]}]}).encode(),
             "expected [-1, 1, 28, 28]"),
            ("too few values", json.dumps(v2_fp32(good[:100])).encode(), "100 values"),
            ("too many values", json.dumps(v2_fp32(good + [0.0])).encode(), "more values"),
            ("a string value", json.dumps(v2_fp32(["x"] * 784)).encode(), "inputs[0].data[0]"),
            ("UINT8 out of range", json.dumps({"inputs": [{"name": "input", "datatype": "UINT8",
                                                           "shape": [1, 1, 28, 28], "data": [300] * 784}]}).encode(),
             "0 to 255"),
            ("bad base64", json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                                   "data": ["!!!!"]}]}).encode(), "base64"),
            ("not an image", json.dumps({"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1],
                                                     "data": [base64.b64encode(b"hello world!").decode()]}]}).encode(),
             "inputs[0].data[0]"),
            ("zero samples", json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [0, 1, 28, 28],
                                                     "data": []}]}).encode(), "1 to 4096 samples"),
        ]
        for what, body, needle in cases:
            status, _, reply = s.request("POST", "/v2/models/cnn/infer", body)
            self.assertEqual(status, 400, what)
            self.assertIn(needle, json.loads(reply)["error"], what)
        for what, doc, needle in [("tf both forms", {"instances": [good], "inputs": [good]}, "exactly one"),
                                  ("tf wrong size", {"instances": [good[:10]]}, "instances[0]"),
                                  ("tf b64 not a string", {"instances": [{"b64": 5}]}, "b64")]:
            status, _, reply = s.json("POST", "/v1/models/cnn:predict", doc)
            self.assertEqual(status, 400, what)
            self.assertIn(needle, reply["error"], what)
        # Binary header length beyond the body.
        status, _, reply = s.request("POST", "/v2/models/cnn/infer", b"{}", {"Inference-Header-Content-Length": "99"})
        self.assertEqual(status, 400)
        self.assertIn("Inference-Header-Content-Length", json.loads(reply)["error"])
        # Another model, another path, another method.
        self.assertEqual(s.request("POST", "/v2/models/resnet/infer", b"{}")[0], 404)
        self.assertEqual(s.request("GET", "/nowhere")[0], 404)
        status, headers, _ = s.request("GET", "/v2/models/cnn/infer")
        self.assertEqual((status, headers.get("Allow")), (405, "POST"))
        self.assertEqual(s.request("DELETE", "/v2/health/live")[0], 405)
        # And it still serves.
        self.assertEqual(s.json("POST", "/v2/models/cnn/infer", v2_fp32(good))[0], 200)

    def test_metrics_count_requests_by_code_with_latency_and_batch_histograms(self):
        s = self.s
        s.request("GET", "/nowhere")
        s.json("POST", "/v2/models/cnn/infer", v2_fp32(normalise(self.images[1], self.meta)))
        text = s.request("GET", "/metrics")[2].decode()
        self.assertRegex(text, r'shoal_serve_requests_total\{model="cnn",code="404"\} [1-9]')
        self.assertRegex(text, r'shoal_serve_requests_total\{model="cnn",code="200"\} [1-9]')
        self.assertRegex(text, r'shoal_serve_request_seconds_bucket\{model="cnn",le="\+Inf"\} [1-9]')
        self.assertRegex(text, r'shoal_serve_batch_size_count [1-9]')
        self.assertIn("shoal_serve_queue_depth 0", text)


class Limits(unittest.TestCase):
    def test_a_body_over_the_limit_is_413(self):
        s = Server(CKPT, "--serve.port=0", "--serve.max_body_mib=1")
        try:
            status, _, body = s.request("POST", "/v2/models/cnn/infer", b"x" * (1 << 20 + 1))
            self.assertEqual(status, 413)
            self.assertIn("over the limit", json.loads(body)["error"])
            self.assertEqual(s.request("GET", "/v2/health/live")[0], 200)
        finally:
            self.assertEqual(s.stop(), 0)

    def test_a_full_queue_is_429_with_retry_after_and_a_late_request_504(self):
        # One request waits 1.5 s for company (the queue holds one): the next is refused at once.
        s = Server(CKPT, "--serve.port=0", "--serve.queue=1", "--serve.max_delay_us=1500000", "--serve.always_wait",
                   "--serve.max_batch=64", "--serve.timeout_seconds=0.5")
        try:
            x = v2_fp32([0.0] * 784)
            first = {}
            t = threading.Thread(target=lambda: first.update(r=s.json("POST", "/v2/models/cnn/infer", x)))
            t.start()
            deadline = time.time() + 20
            while b"shoal_serve_queue_depth 1" not in s.request("GET", "/metrics")[2]:
                self.assertLess(time.time(), deadline, "the first request never queued")
                time.sleep(0.01)
            status, headers, doc = s.json("POST", "/v2/models/cnn/infer", x)
            self.assertEqual(status, 429, doc)
            self.assertEqual(headers.get("Retry-After"), "1")
            t.join()
            # The first one waited 1.5 s, past its 0.5 s deadline: 504, not run.
            self.assertEqual(first["r"][0], 504, first["r"])
            self.assertIn("serve.timeout_seconds", first["r"][2]["error"])
        finally:
            self.assertEqual(s.stop(), 0)

    def test_port_from_the_environment(self):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        s = Server(CKPT, env={"PORT": str(port)})
        try:
            self.assertEqual(s.port, port)
        finally:
            self.assertEqual(s.stop(), 0)
        r = subprocess.run([SHOAL, "serve", CKPT], env=dict(os.environ, PORT="http"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=60)
        self.assertEqual(r.returncode, 2)
        self.assertIn("PORT", r.stderr)

    def test_bad_models_are_refused_naming_them(self):
        for path, code, needle in [(os.path.join(WORK, "none"), 5, "none"),
                                   (os.path.join(WORK, "garbage.onnx"), 2, "garbage.onnx")]:
            if path.endswith(".onnx"):
                with open(path, "wb") as f:
                    f.write(b"\x08\x07garbage")
            r = subprocess.run([SHOAL, "serve", path, "--serve.port=0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(r.returncode, code, r.stderr)
            self.assertIn(needle, r.stderr)


class Lifecycle(unittest.TestCase):
    def test_sigterm_answers_the_request_in_flight_then_exits_0(self):
        s = Server(CKPT, "--serve.port=0", "--serve.max_delay_us=1000000", "--serve.max_batch=64", "--serve.always_wait",
                   "--serve.drain_seconds=10")
        x = v2_fp32([0.0] * 784)
        kept = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
        kept.request("GET", "/v2/health/ready")
        self.assertEqual(kept.getresponse().read(), b'{"ready": true}')
        result = {}
        t = threading.Thread(target=lambda: result.update(r=s.json("POST", "/v2/models/cnn/infer", x)))
        t.start()
        deadline = time.time() + 20
        while b"shoal_serve_queue_depth 1" not in s.request("GET", "/metrics")[2]:
            self.assertLess(time.time(), deadline)
            time.sleep(0.01)
        started = time.time()
        s.proc.send_signal(signal.SIGTERM)
        # Not ready at once, on a connection it already had.
        while True:
            kept.request("GET", "/v2/health/ready")
            r = kept.getresponse()
            body = r.read()
            if r.status == 503:
                break
            self.assertLess(time.time(), deadline)
        t.join()
        self.assertEqual(result["r"][0], 200, result["r"])
        self.assertEqual(s.proc.wait(timeout=15), 0)
        self.assertLess(time.time() - started, 10)

    def test_a_new_checkpoint_is_swapped_in_under_load_with_no_failed_request(self):
        s = Server(CKPT, "--serve.port=0", "--serve.poll_seconds=0.2")
        try:
            step0 = s.json("GET", "/v2/models/cnn")[2]["versions"][0]
            x = v2_fp32([0.0] * 784)
            stop, codes, versions = threading.Event(), [], set()

            def client():
                c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
                while not stop.is_set():
                    c.request("POST", "/v2/models/cnn/infer", json.dumps(x))
                    r = c.getresponse()
                    body = r.read()
                    codes.append(r.status)
                    if r.status == 200:
                        versions.add(json.loads(body)["model_version"])

            threads = [threading.Thread(target=client) for _ in range(4)]
            for t in threads:
                t.start()
            try:
                train(epochs=2)  # resumes from the checkpoint, writes a newer one
                deadline = time.time() + 30
                while len(versions) < 2:
                    self.assertLess(time.time(), deadline, f"never swapped: {versions}")
                    time.sleep(0.05)
            finally:
                stop.set()
                for t in threads:
                    t.join()
            self.assertIn(step0, versions)
            self.assertGreater(len(codes), 20)
            self.assertEqual([c for c in codes if c != 200], [], "failed requests during the swap")
            self.assertTrue(any("swapped in" in line for line in s.log), "".join(s.log))
        finally:
            self.assertEqual(s.stop(), 0)


class Export(unittest.TestCase):
    def test_an_export_serves_predicts_and_runs_in_opencv_as_the_checkpoint(self):
        path = os.path.join(WORK, "fm.onnx")
        r = subprocess.run([SHOAL, "export", CKPT, "-o", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("opset 11", r.stdout)
        r = subprocess.run([SHOAL, "model", "show", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("conv", r.stdout)
        # The test set through `shoal predict`: the same class and score from the file as from the checkpoint.
        lines = {}
        for model in (CKPT, path):
            r = subprocess.run([SHOAL, "predict", model, "--data", JOB, "--limit", "300", "--top", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            lines[model] = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual(len(lines[path]), 301)
        for a, b in zip(lines[CKPT][:-1], lines[path][:-1]):
            self.assertAlmostEqual(a["score"], b["score"], delta=1e-5)
            tie = abs(a["top"][0]["score"] - a["top"][1]["score"]) < 1e-5
            self.assertTrue(a["class"] == b["class"] or tie, (a, b))
        self.assertAlmostEqual(lines[CKPT][-1]["accuracy"], lines[path][-1]["accuracy"], delta=1 / 300)
        # Served: the file and the checkpoint answer alike, and OpenCV's DNN module computes the same logits.
        a, b = Server(CKPT, "--serve.port=0"), Server(path, "--serve.port=0")
        try:
            meta = b.json("GET", "/v2/models/cnn")[2]
            self.assertEqual(meta["versions"], a.json("GET", "/v2/models/cnn")[2]["versions"])
            images = test_images(8)
            x = [v for px in images for v in normalise(px, meta)]
            la = a.json("POST", "/v2/models/cnn/infer", v2_fp32(x, 8))[2]["outputs"][0]["data"]
            lb = b.json("POST", "/v2/models/cnn/infer", v2_fp32(x, 8))[2]["outputs"][0]["data"]
            top = max(1.0, max(abs(v) for v in la))
            self.assertLessEqual(max(abs(p - q) for p, q in zip(la, lb)) / top, 1e-5)
        finally:
            self.assertEqual(a.stop(), 0)
            self.assertEqual(b.stop(), 0)
        try:
            import cv2
            import numpy as np
        except ImportError as e:
            self.skipTest(f"OpenCV's Python module is not installed ({e}); the file was checked by `shoal` alone")
        net = cv2.dnn.readNetFromONNX(path)
        net.setInput(np.array(x, dtype=np.float32).reshape(8, 1, 28, 28))
        lc = net.forward().ravel().tolist()
        self.assertLessEqual(max(abs(p - q) for p, q in zip(la, lc)) / top, 1e-5)


class BatchNormModel(unittest.TestCase):
    def test_an_async_jobs_last_checkpoint_of_a_batch_norm_model_is_written_and_predicts_as_the_job(self):
        # The job's last checkpoint used to wait for a worker to write the batch-norm buffers while
        # every worker was told to wait for the job's end: abandoned after 60 s, nothing to serve.
        ckpt = os.path.join(WORK, "bn")
        started = time.monotonic()
        r = subprocess.run([SHOAL, "launch", JOB, "--local", "--model=cnn_bn", "--train.epochs=1",
                            "--checkpoint.dir=" + ckpt] + TRAIN, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:])
        self.assertNotIn("abandoned", r.stdout)
        self.assertLess(time.monotonic() - started, 45, "the job waited for its last checkpoint")
        accuracy = float(re.search(r"final test accuracy: ([0-9.]+)%", r.stdout).group(1)) / 100
        with open(os.path.join(ckpt, "LATEST")) as f:
            latest = f.read().strip()
        self.assertIn("buffers", open(os.path.join(ckpt, latest, "MANIFEST")).read())
        r = subprocess.run([SHOAL, "predict", ckpt, "--data", JOB, "--limit", "1000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertAlmostEqual(json.loads(r.stdout.splitlines()[-1])["accuracy"], accuracy, delta=0.002)


def hold_connections(port, n):
    """n connections: half silent, half sending a request a byte at a time (from a thread)."""
    socks = []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        socks.append(c)
    stop = threading.Event()
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 300 + b"\r\n\r\n"

    def trickle():
        for b in range(len(request)):
            if stop.is_set():
                return
            for c in socks[::2]:
                try:
                    c.send(request[b:b + 1])
                except OSError:
                    pass
            time.sleep(0.01)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    return socks, stop, t


def probe_ms(port, path):
    start = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, (time.monotonic() - start) * 1000


class IdleConnections(unittest.TestCase):
    N = 1000

    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard < cls.N + 200:
            raise unittest.SkipTest(f"the descriptor limit ({hard}) is below {cls.N + 200}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def check(self, port, path, what):
        socks, stop, t = hold_connections(port, self.N)
        try:
            # A first probe connects after every held connection (the listen queue is FIFO): once
            # it is answered, the server has accepted them all, and the timed probes meet all of them.
            self.assertEqual(probe_ms(port, path)[0], 200, what)
            times = []
            for _ in range(20):
                status, ms = probe_ms(port, path)
                self.assertEqual(status, 200, what)
                times.append(ms)
            times.sort()
            self.assertLess(times[-1], 100, f"{what}: slowest of 20 probes {times[-1]:.1f} ms (median "
                                            f"{times[10]:.1f} ms) with {self.N} idle and trickling connections")
            print(f"{what}: {self.N} idle/trickling connections, probe median {times[10]:.2f} ms, "
                  f"max {times[-1]:.2f} ms", flush=True)
        finally:
            stop.set()
            t.join()
            for c in socks:
                c.close()

    def test_serve_liveness(self):
        s = Server(CKPT, "--serve.port=0")
        try:
            self.check(s.port, "/v2/health/live", "shoal serve /v2/health/live")
        finally:
            self.assertEqual(s.stop(), 0)

    def test_every_training_role_healthz(self):
        p = subprocess.Popen([SHOAL, "launch", JOB, "--local", "--metrics.port=0", "--metrics.host=127.0.0.1",
                              "--train.epochs=3", "--cluster.workers=1", "--cluster.servers=1", "--progress=off",
                              "--cluster.on_job_end=wait"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ports = {}
        pattern = re.compile(r"^(\S+)\s+\|.*serving /healthz /readyz /metrics on http://[^:]+:(\d+)")
        try:
            for line in p.stdout:
                m = pattern.match(line)
                if m:
                    ports[m.group(1)] = int(m.group(2))
                if len(ports) == 3:
                    break
            self.assertEqual(len(ports), 3, ports)
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            for role, port in sorted(ports.items()):
                self.check(port, "/healthz", f"{role} /healthz")
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v"])
