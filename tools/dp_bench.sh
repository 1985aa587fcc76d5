#!/usr/bin/env bash
# Data-parallel training throughput on this machine: ResNet-20 on Fashion-MNIST, the same number
# of training steps per worker, measured one configuration after the other (never two at once):
#   1 worker x 1 thread, 2 workers x 1 thread (--nproc 2), 1 worker x 2 threads,
#   and 2 workers at half the batch (the same global batch as one worker).
# Usage: tools/dp_bench.sh [STEPS] [OUT_DIR]     (defaults: 120 steps, runs/dp-bench)
set -euo pipefail
steps=${1:-120}
out=${2:-runs/dp-bench}
bin=${POCKETFLOW:-build/bin/pocketflow}
[[ "$steps" =~ ^[0-9]+$ ]] || { echo "dp_bench.sh: STEPS must be a number, got '$steps'" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "dp_bench.sh: $bin not built (tools/build.sh)" >&2; exit 2; }
mkdir -p "$out"
common=(--config configs/resnet20_fmnist.yaml --set train.epochs=1 --set train.steps_per_epoch="$steps"
        --set data.val_size=0 --set train.log_every=1000)
run() {  # name, then the arguments
    local name=$1; shift
    rm -rf "$out/$name"
    "$bin" --json "$@" "${common[@]}" --set output_dir="$out/$name" >"$out/$name.json" 2>"$out/$name.log"
    python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%-28s %8.0f img/s" % (sys.argv[2], s["stages"][0]["images_per_second"]))' \
        "$out/$name.json" "$name"
}
run 1w-1t --threads 1 train
run 2w-1t --threads 1 train --nproc 2
run 1w-2t --threads 2 train
run 2w-1t-half-batch --threads 1 train --nproc 2 --set data.batch_size=64 --set train.steps_per_epoch=$((steps))
