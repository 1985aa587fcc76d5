#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Quick start, one command on a fresh Debian 12: install what is missing, build, and train LeNet-5 on
# Fashion-MNIST (configs/quickstart.yaml), printing the result table.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
tools/build.sh
exec build/bin/pocketflow train --config configs/quickstart.yaml "$@"
