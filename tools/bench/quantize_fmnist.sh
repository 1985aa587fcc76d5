#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The uniform-quantization benchmark of docs/performance.md on Fashion-MNIST: a trained base model
# (ResNet-20 from configs/resnet20_fmnist.yaml, or LeNet-5 from configs/quickstart.yaml) quantized
# by post-training calibration (three range methods, 256 images) and by 2 epochs of QAT at 8/8,
# w4a8 and w4a4 bits (configs/resnet20_fmnist_qat.yaml; moving-average or learned ranges), then the
# float and int8 models timed side by side in ONNX Runtime at batch 1 and 16. About 20 minutes for
# ResNet-20 on 2 cores.
#   tools/bench/quantize_fmnist.sh BASE_MODEL.pfm [OUT_DIR] [RUNS...]
# RUNS are names from the list below (default: all). PF_BIN overrides the binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: quantize_fmnist.sh BASE_MODEL.pfm [OUT_DIR] [RUNS...]}
out=${2:-runs/quantize-bench}
shift $(( $# >= 2 ? 2 : 1 ))
declare -A settings=(
    [ptq-minmax]="mode=ptq|calibration=minmax"
    [ptq-percentile]="mode=ptq|calibration=percentile"
    [ptq-mse]="mode=ptq|calibration=mse"
    [ptq-w4a8-mse]="mode=ptq|calibration=mse|bits={weights: 4, activations: 8}"
    [qat-w8a8]="mode=qat"
    [qat-w8a8-reduced]="mode=qat|weight_range=reduced"
    [qat-w4a8]="mode=qat|bits={weights: 4, activations: 8}"
    [qat-w4a8-lsq]="mode=qat|bits={weights: 4, activations: 8}|ranges=lsq"
    [qat-w4a4-lsq]="mode=qat|bits={weights: 4, activations: 4}|ranges=lsq"
)
runs=("$@")
if ((${#runs[@]} == 0)); then
    runs=(ptq-minmax ptq-percentile ptq-mse ptq-w4a8-mse qat-w8a8 qat-w8a8-reduced qat-w4a8
          qat-w4a8-lsq qat-w4a4-lsq)
fi
mkdir -p "$out"
bin=${PF_BIN:-build/bin/pocketflow}
for name in "${runs[@]}"; do
    [[ -n "${settings[$name]:-}" ]] || { echo "unknown run $name" >&2; exit 2; }
    if [[ -f "$out/$name.json" ]]; then
        echo "skip $name (done)"
        continue
    fi
    args=(--set "model.path=$base" --set "output_dir=$out/$name")
    IFS='|' read -r -a stage_keys <<<"${settings[$name]}"
    for kv in "${stage_keys[@]}"; do
        args+=(--set "pipeline.0.$kv")
    done
    echo "== $name: ${settings[$name]}"
    "$bin" --json compress --config configs/resnet20_fmnist_qat.yaml "${args[@]}" \
        >"$out/$name.json.tmp" 2>"$out/$name.log"
    mv "$out/$name.json.tmp" "$out/$name.json"
done
/usr/bin/python3 - "$base" "$out" "${runs[@]}" <<'PY'
import json, os, sys
base, out, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
base_bytes = os.path.getsize(base)
print(f"{'run':<20}{'top-1':>8}{'stage s':>9}{'calib s':>9}{'.pfm bytes':>12}{'smaller':>9}")
for r in runs:
    s = json.load(open(f"{out}/{r}.json"))
    st = s["stages"][0]
    print(f"{r:<20}{s['top1']:>8.2f}{st['seconds']:>9.1f}{st['calibration_seconds']:>9.1f}"
          f"{s['file_bytes']:>12}{base_bytes / s['file_bytes']:>8.2f}x")
PY
"$bin" eval --model "$base" 2>/dev/null | sed 's/^/base: /'
if [[ -f "$out/qat-w8a8/model.pfm" ]]; then
    "$bin" export --model "$out/qat-w8a8/model.pfm" -o "$out/qat-w8a8.onnx" --check \
        --config configs/resnet20_fmnist_qat.yaml --set "model.path=$base" | grep -v '^wrote'
    "$bin" bench --model "$base" --model "$out/qat-w8a8/model.pfm" --runtime onnxruntime \
        --batch 1,16 --warmup 10 --repeat 200
fi
