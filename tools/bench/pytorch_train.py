#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Training throughput of PyTorch's Python eager mode on the same models, data and threads as
`pocketflow train`, for docs/performance.md. Not part of the test suite.

Needs Debian's python3-torch (tools/setup.sh --bench). The data are the real Fashion-MNIST images,
decoded once and normalised; batches are sliced from memory with no augmentation (this favours
PyTorch: pocketflow's number includes its loader and augmentation).

  /usr/bin/python3 tools/bench/pytorch_train.py --arch resnet20 --threads 2 --steps 100
"""
import argparse
import gzip
import json
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def load_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 0x803:
        h, w = struct.unpack(">II", data[8:16])
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, 1, h, w)
    return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8).long()


class LeNet5(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNetCifar(nn.Module):
    def __init__(self, depth=20, classes=10, cin=1):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(cin, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, c = [], 16
        for s, w in enumerate([16, 32, 64]):
            for i in range(n):
                layers.append(Block(c, w, 2 if (i == 0 and s > 0) else 1))
                c = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet20", choices=["lenet5", "resnet20"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = load_idx(f"{a.root}/train-images-idx3-ubyte.gz").float().div_(255).sub_(0.2860).div_(0.3530)
    y = load_idx(f"{a.root}/train-labels-idx1-ubyte.gz")
    model = LeNet5() if a.arch == "lenet5" else ResNetCifar()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    n = x.shape[0] // a.batch
    start = None
    for step in range(a.warmup + a.steps):
        if step == a.warmup:
            start = time.perf_counter()
        i = step % n
        xb, yb = x[i * a.batch:(i + 1) * a.batch], y[i * a.batch:(i + 1) * a.batch]
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        loss.item()
    seconds = time.perf_counter() - start
    print(json.dumps({"runtime": "pytorch-eager", "torch": torch.__version__, "arch": a.arch,
                      "threads": a.threads, "batch": a.batch, "steps": a.steps,
                      "images_per_second": a.steps * a.batch / seconds}))


if __name__ == "__main__":
    main()
