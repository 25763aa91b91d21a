#!/usr/bin/python3
"""Runs an ONNX file with OpenCV's DNN module (cv2.dnn.readNetFromONNX) on a float32 batch.

usage: onnx_opencv_run.py MODEL.onnx INPUT.f32 OUTPUT.f32 N C H W
INPUT.f32 holds N*C*H*W little-endian floats; OUTPUT.f32 receives the first output ("logits").
Exit 77 (skipped, with the reason) without python3-opencv; exit 1 with OpenCV's words when it
cannot read or run the model. Used by tests/models/onnx_test.cc.
"""
import sys

try:
    import cv2
    import numpy as np
except ImportError as error:  # pragma: no cover - depends on the machine
    print(f"SKIP: OpenCV for Python is not installed ({error}); apt-get install python3-opencv")
    sys.exit(77)


def main():
    model, inp, out = sys.argv[1:4]
    n, c, h, w = (int(v) for v in sys.argv[4:8])
    x = np.fromfile(inp, dtype="<f4").reshape(n, c, h, w)
    cv2.setNumThreads(1)
    try:
        net = cv2.dnn.readNetFromONNX(model)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        net.setInput(x, "input")
        y = net.forward("logits")
    except cv2.error as error:
        print(f"OpenCV {cv2.__version__} failed: {' '.join(str(error).split())}")
        sys.exit(1)
    np.ascontiguousarray(y, dtype="<f4").tofile(out)
    print(f"OpenCV {cv2.__version__}: output {list(y.shape)}")


main()
