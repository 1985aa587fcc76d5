#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The "faster by default" check of docs/performance.md: torchvision's ResNet-18 and MobileNet-v2
# exported by PyTorch (eval mode, BN folded, 3×224×224, random weights), pruned to 50% of their
# MACs by channel_pruning with its default settings (LASSO, channel_multiple auto, BatchNorm
# restored for the folded export) on synthetic calibration images, exported, and timed against the
# originals in ONNX Runtime and LibTorch at batch 1 and 16, in one interleaved run. No fine-tuning:
# latency does not depend on it. Needs tools/setup.sh --bench --ort. About 10 minutes on 2 cores.
#   tools/bench/prune_torchvision.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-runs/torchvision-prune}
bin=${PF_BIN:-build/bin/pocketflow}
mkdir -p "$work"
if [[ ! -f "$work/mobilenet_v2.onnx" ]]; then
    /usr/bin/python3 tools/make_onnx_fixtures.py --torchvision "$work" | grep -v 'tests/fixtures'
fi
for arch in resnet18 mobilenet_v2; do
    name=$arch-cp50
    cat >"$work/$name.yaml" <<YAML
name: $name
model: {onnx: $work/$arch.onnx}
data: {dataset: synthetic, batch_size: 16, synthetic: {train: 256, test: 32, classes: 1000, shape: [3, 224, 224]}}
pipeline: [{learner: channel_pruning, flops_target: 0.5, finetune_epochs: 0}]
export: {onnx: true}
output_dir: $work/$name
YAML
    if [[ ! -f "$work/$name.json" ]]; then
        "$bin" --json compress --config "$work/$name.yaml" >"$work/$name.json.tmp" 2>"$work/$name.log"
        mv "$work/$name.json.tmp" "$work/$name.json"
    fi
    /usr/bin/python3 -c "import json,sys; s=json.load(open(sys.argv[1])); st=s['stages'][0]; print('%s: MACs kept %.3f, channel_multiple %d (%s), params %d -> %d, pruning %.1f s' % (sys.argv[2], st['macs_kept'], st['channel_multiple'], st['target'], s['params_before'], s['params'], st['prune_seconds']))" "$work/$name.json" "$arch"
    "$bin" export --model "$work/$name/model.pfm" -o "$work/$name.onnx" --check | tail -1
done
"$bin" bench --model "$work/resnet18.onnx" --model "$work/resnet18-cp50.onnx" \
    --model "$work/mobilenet_v2.onnx" --model "$work/mobilenet_v2-cp50.onnx" --batch 1,16 \
    --warmup 5 --repeat 30
