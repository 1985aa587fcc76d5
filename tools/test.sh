#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The whole test suite, one command on a fresh Debian 12: install what is missing, build, run ctest
# (unit + integration). .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh --ort --browser
tools/build.sh
cd build
ctest --output-on-failure --parallel "$(nproc)" --timeout 600 "$@"
