#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# End-to-end check of ONNX interoperability on full-size models exported by PyTorch: torchvision's
# ResNet-18 and MobileNet-v2 (random weights, 3×224×224, 1000 classes) are imported, checked against
# ONNX Runtime, fine-tuned for a few steps on synthetic data, exported and checked again, then
# benchmarked. Needs tools/setup.sh --bench --ort. Takes a few minutes; not part of the test suite.
#   tools/check_torchvision.sh [workdir]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
bin=build/bin/pocketflow
/usr/bin/python3 tools/make_onnx_fixtures.py --torchvision "$work" | grep -v '^wrote .*tests/fixtures'
for arch in resnet18 mobilenet_v2; do
    echo "== $arch"
    "$bin" info --model "$work/$arch.onnx" | tail -1
    "$bin" export --model "$work/$arch.onnx" -o "$work/$arch.reexport.onnx" --check
    "$bin" --json train --set model.onnx="$work/$arch.onnx" --set data.dataset=synthetic \
        --set 'data.synthetic={train: 64, test: 32, classes: 1000, shape: [3, 224, 224]}' --set data.batch_size=16 \
        --set train.epochs=1 --set train.steps_per_epoch=2 --set train.optimizer.lr=0.001 \
        --set output_dir="$work/$arch-run" --set export.onnx=true >"$work/$arch-run.json"
    /usr/bin/python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print('fine-tuned 2 steps:', s['model'], s['onnx'])" "$work/$arch-run.json"
    "$bin" export --model "$work/$arch-run/model.pfm" -o "$work/$arch-finetuned.onnx" --check
    "$bin" bench --model "$work/$arch-run/model.pfm" --model "$work/$arch-finetuned.onnx" --batch 1 --repeat 10
done
echo "== mobilenet_v2 pruned to 70% of its MACs (depthwise coupling), then checked and benchmarked"
for multiple in 1 16; do
    name=mobilenet_v2-cp70-m$multiple
    cat >"$work/$name.yaml" <<YAML
name: $name
model: {onnx: $work/mobilenet_v2.onnx}
data: {dataset: synthetic, batch_size: 16, synthetic: {train: 64, test: 32, classes: 1000, shape: [3, 224, 224]}}
pipeline: [{learner: channel_pruning, flops_target: 0.7, criterion: l1, channel_multiple: $multiple, finetune_epochs: 0}]
export: {onnx: true}
output_dir: $work/$name
YAML
    "$bin" --json compress --config "$work/$name.yaml" >"$work/$name.json"
    /usr/bin/python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print('channel_multiple %s: MACs kept %.3f, params %d -> %d' % (sys.argv[2], s['macs']/s['macs_before'], s['params_before'], s['params']))" "$work/$name.json" "$multiple"
    "$bin" export --model "$work/$name/model.pfm" -o "$work/$name.onnx" --check
done
"$bin" bench --model "$work/mobilenet_v2.onnx" --model "$work/mobilenet_v2-cp70-m1.onnx" \
    --model "$work/mobilenet_v2-cp70-m16.onnx" --batch 1,16 --repeat 20
