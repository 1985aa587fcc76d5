#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Fine-tunes a BN-folded ONNX model (an eval-mode export: biased convs, no BatchNorm) in PyTorch
# with pocketflow's ResNet-20 fine-tuning recipe (SGD 0.01, momentum 0.9, Nesterov, weight decay
# 5e-4, batch 128, normalised Fashion-MNIST, no augmentation), for several shuffles, and prints the
# loss every few steps: the reference for pocketflow's `model.restore_bn` (docs/performance.md).
# Supports the ops of a plain/residual CNN export (Conv, Relu, Add, GlobalAveragePool, Flatten,
# Gemm). Needs tools/setup.sh --bench and python3-onnx.
#   /usr/bin/python3 tools/bench/folded_finetune.py MODEL.onnx [STEPS] [SEEDS]
import gzip
import sys

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

torch.set_num_threads(2)
model = onnx.load(sys.argv[1])
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
seeds = int(sys.argv[3]) if len(sys.argv) > 3 else 3


def attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def forward(params, x):
    vals = {model.graph.input[0].name: x}
    for n in model.graph.node:
        i = [vals[k] if k in vals else params[k] for k in n.input]
        if n.op_type == "Conv":
            pads = attr(n, "pads", [0, 0, 0, 0])
            y = F.conv2d(i[0], i[1], i[2] if len(i) > 2 else None, attr(n, "strides", [1, 1]),
                         pads[:2], attr(n, "dilations", [1, 1]), attr(n, "group", 1))
        elif n.op_type == "Relu":
            y = F.relu(i[0])
        elif n.op_type == "Add":
            y = i[0] + i[1]
        elif n.op_type == "GlobalAveragePool":
            y = F.adaptive_avg_pool2d(i[0], 1)
        elif n.op_type == "Flatten":
            y = torch.flatten(i[0], 1)
        elif n.op_type == "Gemm":
            y = F.linear(i[0], i[1], i[2])
        else:
            raise SystemExit(f"unsupported op {n.op_type}")
        vals[n.output[0]] = y
    return vals[model.graph.output[0].name]


def idx(path):
    data = gzip.open(path).read()
    return np.frombuffer(data, np.uint8, offset=16 if data[3] == 3 else 8)


root = "/usr/share/datasets/fashion-mnist/"
images = idx(root + "train-images-idx3-ubyte.gz").reshape(-1, 1, 28, 28).astype(np.float32) / 255
labels = torch.tensor(idx(root + "train-labels-idx1-ubyte.gz").astype(np.int64))
images = (torch.tensor(images) - 0.2860) / 0.3530
for seed in range(1, seeds + 1):
    params = {t.name: torch.nn.Parameter(torch.tensor(numpy_helper.to_array(t).copy()))
              for t in model.graph.initializer}
    opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    losses = []
    for step in range(steps):
        b = order[step * 128:(step + 1) * 128]
        loss = F.cross_entropy(forward(params, images[b]), labels[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            break
    shown = " ".join(f"{s + 1}:{l:.3g}" for s, l in enumerate(losses) if s % 3 == 2 or s + 1 == len(losses))
    print(f"shuffle {seed}: loss at step {shown}")
