#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The channel-pruning benchmark of docs/performance.md: ResNet-20 on Fashion-MNIST, pruned to 50% and
# 33% of its MACs with each criterion, with and without distillation, with free channel counts and
# in blocks of 16 (channel_multiple), 4 fine-tuning epochs each
# (configs/resnet20_fmnist_cp.yaml). The latency table's `pocketflow bench` command is in
# docs/performance.md.
#   tools/bench/prune_resnet20.sh BASE_MODEL.pfm [OUT_DIR] [RUNS...]
# RUNS are target:criterion:distill[:channel_multiple] (default: the full table). About 5-6 minutes
# per run on 2 cores. PF_BIN overrides the binary (e.g. a copy, so a rebuild cannot change it midway).
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: prune_resnet20.sh BASE_MODEL.pfm [OUT_DIR] [RUNS...]}
out=${2:-runs/prune-bench}
shift $(( $# >= 2 ? 2 : 1 ))
runs=("$@")
if ((${#runs[@]} == 0)); then
    runs=(0.5:lasso:1:16 0.5:lasso:0:16 0.5:l1:1:16 0.5:fpgm:1:16
          0.5:lasso:1 0.5:lasso:0 0.5:l1:1 0.5:fpgm:1
          0.33:lasso:1 0.33:lasso:0 0.33:l1:1 0.33:fpgm:1 0.5:lasso:1:8)
fi
mkdir -p "$out"
bin=${PF_BIN:-build/bin/pocketflow}
for run in "${runs[@]}"; do
    IFS=: read -r target criterion distill multiple <<<"$run"
    multiple=${multiple:-1}
    name="t${target}-${criterion}-kd${distill}-m${multiple}"
    if [[ -f "$out/$name.json" ]]; then
        echo "skip $name (done)"
        continue
    fi
    echo "== $name"
    "$bin" --json compress --config configs/resnet20_fmnist_cp.yaml --set model.path="$base" \
        --set output_dir="$out/$name" --set pipeline.0.flops_target="$target" \
        --set pipeline.0.criterion="$criterion" --set pipeline.0.channel_multiple="$multiple" \
        --set distillation.enabled=$([[ $distill == 1 ]] && echo true || echo false) \
        >"$out/$name.json.tmp" 2>"$out/$name.log"
    mv "$out/$name.json.tmp" "$out/$name.json"
    /usr/bin/python3 - "$out/$name.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); st = s["stages"][0]
print(f"top1 {s['top1']:.2f}%  MACs kept {st['macs_kept']:.3f}  params {s['params']}  prune {st['prune_seconds']:.1f}s")
PY
done
