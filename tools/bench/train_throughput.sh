#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Training throughput (images/s, batch 128) of pocketflow and of PyTorch's Python eager mode on the
# same model, data (Fashion-MNIST) and thread count, measured alternately in one run so the ratio is
# honest on a noisy machine. Needs tools/setup.sh --bench (python3-torch) for the PyTorch side.
#   tools/bench/train_throughput.sh [threads] [rounds]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-2}
rounds=${2:-3}
bin=build/bin/pocketflow
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%-10s %-6s %14s %14s %8s\n' model round pocketflow pytorch ratio
for arch in lenet5 resnet20; do
    if [[ $arch == lenet5 ]]; then steps=300; config=configs/quickstart.yaml; else steps=60; config=configs/resnet20_fmnist.yaml; fi
    for r in $(seq 1 "$rounds"); do
        pf=$("$bin" --json --threads "$threads" train --config "$config" --set output_dir="$tmp/$arch-$r" \
                --set train.epochs=1 --set train.steps_per_epoch=$((steps + 5)) --set data.val_size=0 2>/dev/null |
             /usr/bin/python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["stages"][0]["images_per_second"])')
        pt=$(/usr/bin/python3 tools/bench/pytorch_train.py --arch "$arch" --threads "$threads" --steps "$steps" |
             /usr/bin/python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["images_per_second"])')
        printf '%-10s %-6s %14s %14s %8.2f\n' "$arch" "$r" "$pf" "$pt" "$(/usr/bin/python3 -c "print($pf / $pt)")"
    done
done
