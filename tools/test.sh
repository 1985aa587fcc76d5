#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The whole test suite, one command on a fresh Debian 12: install what is missing, build, run ctest
# (unit + integration), then the parsers of untrusted input built with clang + ASan + UBSan (the
# fuzz preset) fuzzed for a fixed number of seeded inputs each. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --ort --browser --fuzz
tools/build.sh
(cd build && ctest --output-on-failure --parallel "$(nproc)" --timeout 600 "$@")
tools/fuzz.sh --runs "${POCKETFLOW_FUZZ_RUNS:-30000}"
