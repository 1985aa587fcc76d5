#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs a benchmark suite (configs/benchmarks/SUITE_suite.yaml) with `pocketflow sweep`, then gates
# it with `pocketflow check` against the committed baseline (configs/benchmarks/SUITE_baseline.json,
# which states its own limits). Resumable: rerun the same command after an interruption.
#   tools/benchmark.sh SUITE [--out DIR] [--threads N] [--baseline FILE] [--update-baseline]
#                            [--max-drop m=x] [--max-rise m=x] [--max-ratio m=r] [SWEEP OPTIONS...]
# Exit: 0 no regression, 1 a regression or a failed run, 2 bad input, 130 interrupted.
# SWEEP OPTIONS go to `pocketflow sweep` (e.g. --jobs 2, --set data.train_limit=1000, --latency 1).
# --update-baseline writes the suite's results as its baseline (same limits) instead of checking.
# Data and model locations come from the environment (see each suite file): PF_CIFAR10, PF_IMAGENET,
# PF_IMAGENET_MODELS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
suites=$(cd "$root/configs/benchmarks" && ls ./*_suite.yaml | sed 's|^\./||; s|_suite\.yaml$||' | tr '\n' ' ')
if (($# < 1)); then
    echo "usage: tools/benchmark.sh SUITE [options] (suites: $suites)" >&2
    exit 2
fi
suite="$1"
shift
file="$root/configs/benchmarks/${suite}_suite.yaml"
if [[ ! -f "$file" ]]; then
    echo "benchmark: no suite '$suite' (suites: $suites)" >&2
    exit 2
fi
baseline="$root/configs/benchmarks/${suite}_baseline.json"
out="runs/benchmarks/$suite"
update=0
global_args=()
sweep_args=()
check_args=()
need_value() {
    if (($# < 2)); then
        echo "benchmark: $1 needs a value" >&2
        exit 2
    fi
}
while (($# > 0)); do
    case "$1" in
        --out | --baseline | --threads | --max-drop | --max-rise | --max-ratio | --max-slowdown)
            need_value "$@" ;;&
        --out) out="$2"; shift 2 ;;
        --baseline) baseline="$2"; shift 2 ;;
        --update-baseline) update=1; shift ;;
        --threads) global_args+=(--threads "$2"); shift 2 ;;
        --max-drop | --max-rise | --max-ratio | --max-slowdown) check_args+=("$1" "$2"); shift 2 ;;
        *) sweep_args+=("$1"); shift ;;
    esac
done
pf="${POCKETFLOW:-$root/build/bin/pocketflow}"
if [[ ! -x "$pf" ]]; then
    echo "benchmark: $pf not found: build first (tools/build.sh)" >&2
    exit 2
fi
echo "benchmark: suite $suite -> $out"
set +e
"$pf" "${global_args[@]}" sweep --file "$file" --out "$out" "${sweep_args[@]}"
rc=$?
set -e
if ((rc != 0 && rc != 1)); then
    exit "$rc"  # interrupted (rerun to continue), killed, or bad input: no gate
fi
if ((update)); then
    # The limits: those given, else the current baseline's (a new suite has none yet).
    existing=()
    if [[ -f "$baseline" ]]; then
        existing=(--baseline "$baseline")
    fi
    exec "$pf" check --results "$out/results.json" "${existing[@]}" \
        --write-baseline "$baseline" "${check_args[@]}"
fi
# A failed run (rc 1) is a regression the gate reports by name.
exec "$pf" check --baseline "$baseline" --results "$out/results.json" "${check_args[@]}"
