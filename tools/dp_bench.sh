#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Data-parallel training throughput on this machine: ResNet-20 on Fashion-MNIST, the same number of
# training steps per worker, one configuration at a time (never two at once), ROUNDS rounds
# interleaved (round k of every configuration, then round k+1) so that a change in the machine's
# load hits all of them alike:
#   1w-1t   1 worker x 1 thread, batch 128
#   2w-1t   2 workers x 1 thread (--nproc 2), batch 128 each (global 256)
#   1w-2t   1 worker x 2 threads, batch 128
#   2w-1t-b64  2 workers x 1 thread at batch 64 each: one worker's global batch of 128
# Images/s is the trainer's own figure (all workers' images; the first 5 steps left out).
# Usage: tools/dp_bench.sh [STEPS] [ROUNDS] [OUT_DIR]     (defaults: 120 steps, 2 rounds, runs/dp-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-120}
rounds=${2:-2}
out=${3:-runs/dp-bench}
bin=${POCKETFLOW:-build/bin/pocketflow}
[[ "$steps" =~ ^[0-9]+$ && "$rounds" =~ ^[0-9]+$ ]] ||
    { echo "dp_bench.sh: STEPS and ROUNDS must be numbers, got '$steps' '$rounds'" >&2; exit 2; }
[[ -x "$bin" ]] || { echo "dp_bench.sh: $bin not built (tools/build.sh)" >&2; exit 2; }
mkdir -p "$out"
common=(--config configs/resnet20_fmnist.yaml --set train.epochs=1 --set train.steps_per_epoch="$steps"
        --set data.val_size=0 --set train.log_every=1000)
declare -A args=(
    [1w-1t]="--threads 1 train"
    [2w-1t]="--threads 1 train --nproc 2"
    [1w-2t]="--threads 2 train"
    [2w-1t-b64]="--threads 1 train --nproc 2 --set data.batch_size=64"
)
names=(1w-1t 2w-1t 1w-2t 2w-1t-b64)
for ((k = 1; k <= rounds; ++k)); do
    for name in "${names[@]}"; do
        run="$out/$name-$k"
        rm -rf "$run"
        # shellcheck disable=SC2086
        "$bin" --json ${args[$name]} "${common[@]}" --set output_dir="$run" >"$run.json" 2>"$run.log" ||
            { echo "dp_bench.sh: $name round $k failed: see $run.log" >&2; exit 1; }
    done
done
python3 - "$out" "$rounds" "${names[@]}" <<'PY'
import json, statistics, sys
out, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ips = {n: [json.load(open(f"{out}/{n}-{k}.json"))["stages"][0]["images_per_second"]
           for k in range(1, rounds + 1)] for n in names}
base = statistics.median(ips["1w-1t"])
print(f"{'configuration':<12} {'img/s (median)':>15} {'vs 1w-1t':>9}   rounds")
for n in names:
    m = statistics.median(ips[n])
    print(f"{n:<12} {m:>15.0f} {m / base:>8.2f}x   " + " ".join(f"{v:.0f}" for v in ips[n]))
PY
