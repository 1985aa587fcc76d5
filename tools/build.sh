#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Configures and builds pocketflow into build/ (Release, Ninja, ccache when present).
# The binary lands at build/bin/pocketflow. Jobs default to the number of cores.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${POCKETFLOW_BUILD_JOBS:-$(nproc)}
generator=()
if command -v ninja >/dev/null; then
    generator=(-G Ninja)
fi
if [[ ! -f build/CMakeCache.txt ]]; then
    cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
fi
cmake --build build --parallel "$jobs"
