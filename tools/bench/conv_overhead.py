#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Per-convolution cost at batch 1 in LibTorch 1.13 (Debian's python3-torch, the same library that
# pocketflow links): at::conv2d's default dispatch (im2col + BLAS below batch 16) against oneDNN
# (aten::mkldnn_convolution, channels-last, what pocketflow's inference path calls), on ResNet-20's
# layer shapes, and on a 4×4 input where the time is almost all fixed overhead. Median µs of 2,000
# calls after 50 warm-up calls. Needs tools/setup.sh --bench.
#   /usr/bin/python3 tools/bench/conv_overhead.py [THREADS]
import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)


def median_us(fn, n=2000, warmup=50):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


print(f"{'channels':>8} {'size':>6} {'MACs':>7} {'conv2d us':>10} {'oneDNN us':>10}")
cl = torch.channels_last
with torch.inference_mode():
    for c, hw in [(16, 28), (8, 28), (32, 14), (16, 14), (64, 7), (32, 7), (16, 4)]:
        x = torch.randn(1, c, hw, hw)
        w = torch.randn(c, c, 3, 3)
        b = torch.randn(c)
        xc, wc = x.contiguous(memory_format=cl), w.contiguous(memory_format=cl)
        dispatch = median_us(lambda: torch.conv2d(x, w, b, 1, 1))
        onednn = median_us(
            lambda: torch.ops.aten.mkldnn_convolution(xc, wc, b, [1, 1], [1, 1], [1, 1], 1))
        print(f"{c:>8} {hw:>3}x{hw:<2} {c * c * 9 * hw * hw / 1e6:>6.2f}M {dispatch:>10.1f} {onednn:>10.1f}")
