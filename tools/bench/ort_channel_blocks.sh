#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# How fast ONNX Runtime convolves as a function of the channel count: a chain of six 3×3 conv+ReLU
# layers with C input and output channels (28×28 for C ≤ 16, 14×14 for C ≤ 32, 7×7 above, as in
# ResNet-20's stages) is exported by PyTorch and timed at batch 1 and 64. Prints GMAC/s per row: on
# AVX-512 machines multiples of 16 take ONNX Runtime's blocked NCHWc kernels, other counts a slower
# path — the reason for channel_pruning's channel_multiple. Needs tools/setup.sh --bench --ort.
#   tools/bench/ort_channel_blocks.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 - "$work" <<'PY'
import sys, torch, numpy as np
work = sys.argv[1]
torch.manual_seed(0)
class Chain(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(c, c, 3, 1, 1) for _ in range(6)])
    def forward(self, x):
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x
for c in [8, 12, 16, 24, 32, 40, 48, 64]:
    hw = 28 if c <= 16 else (14 if c <= 32 else 7)
    torch.onnx.export(Chain(c).eval(), torch.randn(1, c, hw, hw), f"{work}/c{c}.onnx", opset_version=13,
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    for b in [1, 64]:
        np.random.default_rng(0).standard_normal((b, c, hw, hw)).astype(np.float32).tofile(f"{work}/c{c}_b{b}.f32")
PY
printf "%-9s%-7s%-7s%12s%10s\n" channels size batch "median ms" "GMAC/s"
for c in 8 12 16 24 32 40 48 64; do
    hw=28; ((c > 16)) && hw=14; ((c > 32)) && hw=7
    for b in 1 64; do
        ms=$(node tools/ort/run.js --model "$work/c$c.onnx" --input "$work/c${c}_b$b.f32" \
            --shape "$b,$c,$hw,$hw" --warmup 20 --repeat 100 --threads "$threads" |
            /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)['results'][0]['median_ms'])")
        /usr/bin/python3 -c "import sys; c,hw,b,ms=int(sys.argv[1]),int(sys.argv[2]),int(sys.argv[3]),float(sys.argv[4]); print('%-9d%-7s%-7d%12.3f%10.1f' % (c, f'{hw}x{hw}', b, ms, 6*b*c*c*9*hw*hw/ms/1e6))" "$c" "$hw" "$b" "$ms"
    done
done
