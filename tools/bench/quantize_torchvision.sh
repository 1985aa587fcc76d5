#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The int8 check of docs/performance.md: torchvision's ResNet-18 and MobileNet-v2 exported by
# PyTorch (eval mode, BN folded, 3×64×64, 10 classes, random weights with BN statistics measured
# on random inputs), imported (BatchNorm restored), trained 3 epochs on 8,192 Fashion-MNIST images converted to 3×64×64 (data.reshape),
# so that agreement is measured on real images and uncertain predictions, quantized by PTQ 8/8 (256 calibration images, defaults
# otherwise), exported as QDQ ONNX, checked in ONNX Runtime (int8 kernels, agreement with the
# simulation and with the float model on the test images) and timed against the float model in
# ONNX Runtime at batch 1 and 16, side by side in one run per model. Needs tools/setup.sh --bench
# --ort. About 10 minutes on 2 cores.
#   tools/bench/quantize_torchvision.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-runs/torchvision-quant}
bin=${PF_BIN:-build/bin/pocketflow}
mkdir -p "$work"
if [[ ! -f "$work/mobilenet_v2.onnx" ]]; then
    /usr/bin/python3 tools/make_onnx_fixtures.py --torchvision "$work" --size 64 --classes 10 --calibrate-bn |
        grep -v 'tests/fixtures'
fi
for arch in resnet18 mobilenet_v2; do
    lr=0.02
    [[ $arch == mobilenet_v2 ]] && lr=0.05
    cat >"$work/$arch.yaml" <<YAML
name: $arch-int8
seed: 1
model: {onnx: $work/$arch.onnx}
data: {dataset: fashion_mnist, reshape: [3, 64, 64], batch_size: 32, train_limit: 8192, test_limit: 2000}
train:
  epochs: 3
  optimizer: {name: sgd, lr: $lr, momentum: 0.9, nesterov: true, weight_decay: 5.0e-4}
  log_every: 20
pipeline: [{learner: full_precision}]
YAML
    if [[ ! -f "$work/$arch-fp.json" ]]; then
        "$bin" --json train --config "$work/$arch.yaml" --set "output_dir=$work/$arch-fp" \
            >"$work/$arch-fp.json.tmp" 2>"$work/$arch-fp.log"
        mv "$work/$arch-fp.json.tmp" "$work/$arch-fp.json"
    fi
    if [[ ! -f "$work/$arch-ptq.json" ]]; then
        "$bin" --json compress --config "$work/$arch.yaml" --set "output_dir=$work/$arch-ptq" \
            --set model.onnx= --set "model.path=$work/$arch-fp/model.pfm" \
            --set 'pipeline=[{learner: uniform_quantization, mode: ptq}]' \
            >"$work/$arch-ptq.json.tmp" 2>"$work/$arch-ptq.log"
        mv "$work/$arch-ptq.json.tmp" "$work/$arch-ptq.json"
    fi
    /usr/bin/python3 -c "import json,sys; f=json.load(open(sys.argv[1])); q=json.load(open(sys.argv[2])); st=q['stages'][0]; print('%s: float top-1 %.2f%%, PTQ int8 (simulated) %.2f%%, calibration %.1f s, .pfm %d -> %d bytes' % (sys.argv[3], f['top1'], q['top1'], st['calibration_seconds'], f['file_bytes'], q['file_bytes']))" "$work/$arch-fp.json" "$work/$arch-ptq.json" "$arch"
    "$bin" export --model "$work/$arch-ptq/model.pfm" -o "$work/$arch-int8.onnx" --check \
        --config "$work/$arch.yaml" --reference "$work/$arch-fp/model.pfm" | grep -v '^wrote'
    "$bin" bench --model "$work/$arch-fp/model.pfm" --model "$work/$arch-ptq/model.pfm" \
        --runtime onnxruntime --batch 1,16 --warmup 10 --repeat 100
done
