#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the libFuzzer targets (CMake preset "fuzz": clang, ASan + UBSan, into build-fuzz/) and
# runs them, one after another, each for SECONDS (default 30) on one core — bounded, so CI can run
# it. The corpus of each target grows in build-fuzz/corpus/<target>/ (started from the committed
# seeds, fuzz/seeds/<target>/, the shipped job files and the ONNX test fixtures) and is kept
# between runs. A crash stops the script (exit 1) and leaves the input in
# build-fuzz/crashes/<target>/: fix the bug, then keep the input as fuzz/regressions/<target>/<name>
# (ctest replays those in the ordinary build).
#   tools/fuzz.sh [SECONDS] [TARGET...]       targets: job pfm onnx idx_cifar image
#   tools/fuzz.sh --runs N [TARGET...]        N inputs per target, seeded: deterministic (CI)
#   tools/fuzz.sh --seeds                     rewrite fuzz/seeds/ (make_seeds) and exit
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --fuzz
seconds=30
budget=()
deterministic=0
if [[ "${1:-}" == "--runs" ]]; then
    if [[ ! "${2:-}" =~ ^[0-9]+$ ]]; then
        echo "fuzz: --runs needs a number of inputs" >&2
        exit 2
    fi
    budget=(-runs="$2" -seed=1)
    deterministic=1
    seconds="$2 runs"
    shift 2
elif [[ "${1:-}" =~ ^[0-9]+$ ]]; then
    seconds="$1"
    shift
fi
if ((${#budget[@]} == 0)); then
    budget=(-max_total_time="${seconds%s}")
    seconds="${seconds}s"
fi
targets=("$@")
if [[ "${1:-}" == "--seeds" ]]; then
    targets=()
fi
if ((${#targets[@]} == 0)) && [[ "${1:-}" != "--seeds" ]]; then
    targets=(job pfm onnx idx_cifar image)
fi
if [[ ! -f build-fuzz/CMakeCache.txt ]]; then
    cmake --preset fuzz >/dev/null
fi
cmake --build build-fuzz --target fuzz_targets
if [[ "${1:-}" == "--seeds" ]]; then
    rm -rf fuzz/seeds/pfm fuzz/seeds/onnx fuzz/seeds/image fuzz/seeds/idx_cifar fuzz/seeds/job
    build-fuzz/bin/make_seeds fuzz/seeds
    mkdir -p fuzz/seeds/job
    cp configs/quickstart.yaml configs/resnet20_fmnist_cp.yaml configs/resnet20_fmnist_qat.yaml \
        configs/resnet20_fmnist_deep_compression.yaml configs/resnet20_fmnist_amc.yaml fuzz/seeds/job/
    cp tests/fixtures/onnx/tiny_resnet_opset13.onnx tests/fixtures/onnx/tiny_mobile_opset14.onnx \
        fuzz/seeds/onnx/
    exit 0
fi
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
for t in "${targets[@]}"; do
    corpus="build-fuzz/corpus/$t"
    if ((deterministic)); then
        corpus="build-fuzz/corpus-seeds/$t"  # from the seeds alone, every time
        rm -rf "$corpus"
    fi
    crashes="build-fuzz/crashes/$t"
    mkdir -p "$corpus" "$crashes"
    cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    echo "fuzz: $t for $seconds"
    build-fuzz/bin/fuzz_"$t" "$corpus" "${budget[@]}" -rss_limit_mb=4096 \
        -timeout=20 -max_len=65536 -artifact_prefix="$crashes/" -print_final_stats=1 \
        2>"build-fuzz/fuzz_$t.log" || {
        tail -40 "build-fuzz/fuzz_$t.log" >&2
        echo "fuzz: $t found a crash: $(ls -t "$crashes" | head -1) in $crashes" >&2
        exit 1
    }
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|cov:" "build-fuzz/fuzz_$t.log" |
        tail -3 | sed "s/^/fuzz: $t: /"
done
