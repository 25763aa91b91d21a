#!/usr/bin/python3
"""Exports a small CNN from PyTorch (torch.onnx.export) for the ONNX import test.

usage: onnx_torch_export.py OUT_DIR [OPSET]
Writes OUT_DIR/torch_cnn.onnx, OUT_DIR/input.f32 (8x3x16x16 floats) and OUT_DIR/logits.f32
(PyTorch's logits in eval mode, 8x10). The model uses every layer kind Shoal imports: Conv
(with bias, without, strided, grouped), BatchNorm2d with random running statistics, ReLU,
ReLU6, MaxPool2d, AvgPool2d with padding (count_include_pad=False, as Shoal's), a residual add,
a concatenation, AdaptiveAvgPool2d(1), flatten, Dropout and Linear.
Exit 77 (skipped, with the reason) without torch. Used by tests/models/onnx_test.cc.
"""
import os
import sys

try:
    import numpy as np
    import torch
    from torch import nn
except ImportError as error:  # pragma: no cover - depends on the machine
    print(f"SKIP: PyTorch is not installed ({error}); apt-get install python3-torch")
    sys.exit(77)


class SmallCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.branch_a = nn.Conv2d(8, 8, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.act6 = nn.ReLU6()
        self.avg = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        a = self.relu(self.branch_a(x)) + x
        b = self.act6(self.branch_b(x))
        x = self.avg(torch.cat([a, b], dim=1))
        x = self.relu(self.bn2(self.down(x)))
        x = torch.flatten(self.gap(x), 1)
        return self.fc(self.drop(x))


def main():
    out_dir = sys.argv[1]
    opset = int(sys.argv[2]) if len(sys.argv) > 2 else 11
    torch.manual_seed(7)
    torch.set_num_threads(1)
    model = SmallCnn()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
    path = os.path.join(out_dir, "torch_cnn.onnx")
    torch.onnx.export(model, x, path, input_names=["input"], output_names=["logits"], opset_version=opset,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x.numpy().astype("<f4").tofile(os.path.join(out_dir, "input.f32"))
    y.numpy().astype("<f4").tofile(os.path.join(out_dir, "logits.f32"))
    print(f"torch {torch.__version__}: exported {path} (opset {opset})")


main()
