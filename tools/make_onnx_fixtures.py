#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Writes the small ONNX test fixtures under tests/fixtures/onnx with PyTorch's own exporter
(Debian's python3-torch: tools/setup.sh --bench). Run once; the files are committed.

  /usr/bin/python3 tools/make_onnx_fixtures.py [--torchvision DIR]

Each fixture covers a set of the op mappings of pocketflow's ONNX importer. With --torchvision DIR it
also writes torchvision's full-size resnet18 and mobilenet_v2 (ImageNet shapes, random weights) to DIR
for the end-to-end checks in docs (they are too big to commit); --size and --classes change their
input size and number of classes.
"""
import argparse
import copy
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "onnx")


class TinyResNet(nn.Module):
    """conv-BN-ReLU, residual Add, MaxPool (ceil_mode), AvgPool (count_include_pad), view-flatten
    (Shape/Gather/Unsqueeze/Concat/Reshape), Dropout, Linear (Gemm)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.conv3 = nn.Conv2d(8, 16, 3, stride=2, padding=1, dilation=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(16 * 2 * 2, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
        x = F.relu(self.conv3(x) + self.down(x))
        x = F.avg_pool2d(x, 2, stride=2, count_include_pad=True)
        x = x.view(x.size(0), -1)
        return self.fc(self.drop(x))


class TinyMobile(nn.Module):
    """Depthwise conv, ReLU6 (Clip), HardSwish, squeeze-excite (GAP, HardSigmoid, broadcast Mul),
    Sigmoid, Concat, dilated conv, Flatten, MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.dw_bn = nn.BatchNorm2d(16)
        self.se1 = nn.Conv2d(16, 4, 1)
        self.se2 = nn.Conv2d(4, 16, 1)
        self.project = nn.Conv2d(16, 8, 1)
        self.branch = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.w = nn.Parameter(torch.randn(16, 6) * 0.1)
        self.b = nn.Parameter(torch.randn(6) * 0.1)

    def forward(self, x):
        x = F.relu6(self.bn(self.stem(x)))
        y = F.hardswish(self.expand(x))
        y = F.relu6(self.dw_bn(self.dw(y)))
        s = F.adaptive_avg_pool2d(y, 1)
        s = F.hardsigmoid(self.se2(F.relu(self.se1(s))))
        y = y * s
        y = self.project(y) + x
        z = torch.sigmoid(self.branch(y))
        y = torch.cat([y, z], 1)
        y = torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)
        return y @ self.w + self.b


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def export(model, shape, name, opset, training=False, dynamic=True):
    model.eval()
    x = torch.randn(2, *shape)
    kwargs = {}
    if training:
        kwargs["training"] = torch.onnx.TrainingMode.TRAINING
        kwargs["do_constant_folding"] = False
    path = os.path.join(OUT, name)
    torch.onnx.export(model, x, path, opset_version=opset, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic else None, **kwargs)
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--torchvision", help="also write full-size torchvision models to this directory")
    p.add_argument("--size", type=int, default=224, help="--torchvision: input height and width")
    p.add_argument("--classes", type=int, default=1000, help="--torchvision: output classes")
    p.add_argument("--calibrate-bn", action="store_true",
                   help="--torchvision: BatchNorm statistics measured on random inputs, as "
                        "training sets them, instead of random ones: the eval-mode export of a "
                        "random network is then normalised like a trained one's (with random "
                        "statistics a random MobileNet-v2's ReLU6s saturate and it cannot be "
                        "fine-tuned)")
    a = p.parse_args()
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    r = TinyResNet()
    randomize_bn(r)
    export(r, (3, 16, 16), "tiny_resnet_opset11.onnx", 11)
    export(r, (3, 16, 16), "tiny_resnet_opset13.onnx", 13, dynamic=False)
    # Tracing in training mode runs a forward pass that would update the BN running statistics;
    # momentum 0 on a copy keeps them, so this file computes the same function as the others.
    t = copy.deepcopy(r)
    for mod in t.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 0.0
    export(t, (3, 16, 16), "tiny_resnet_training.onnx", 13, training=True)
    m = TinyMobile()
    randomize_bn(m)
    export(m, (3, 16, 16), "tiny_mobile_opset14.onnx", 14)
    export(m, (3, 16, 16), "tiny_mobile_opset17.onnx", 17)
    if a.torchvision:
        import torchvision
        os.makedirs(a.torchvision, exist_ok=True)
        for name in ["resnet18", "mobilenet_v2"]:
            model = getattr(torchvision.models, name)(num_classes=a.classes)
            if a.calibrate_bn:
                for m in model.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.momentum = None  # cumulative average over the batches
                model.train()
                with torch.no_grad():
                    for _ in range(8):
                        model(torch.randn(32, 3, a.size, a.size))
            else:
                randomize_bn(model)
            path = os.path.join(a.torchvision, name + ".onnx")
            model.eval()
            torch.onnx.export(model, torch.randn(1, 3, a.size, a.size), path, opset_version=13,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
            print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
