#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what pocketflow needs, only what is missing. Idempotent; run as root (or with sudo) on
# Debian 12. Everything comes from Debian's packages, except ONNX Runtime (npm's onnxruntime-node,
# installed with --ignore-scripts so that its post-install does not try to download GPU binaries).
#   tools/setup.sh            build + runtime dependencies
#   tools/setup.sh --ort      also ONNX Runtime for Node.js under tools/ort (the tests use it)
#   tools/setup.sh --bench    also python3-torch, python3-torchvision and python3-onnx (tools/bench only)
#   tools/setup.sh --fuzz     also clang and its sanitizer/libFuzzer runtimes (tools/fuzz.sh)
#   tools/setup.sh --browser  also Debian's chromium (headless: the report's rendering test and
#                             tools/report_screenshot.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
    build-essential cmake ninja-build ccache pkg-config
    libtorch-dev libgloo-dev libopenblas0-pthread libdnnl-dev
    libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev libeigen3-dev nlohmann-json3-dev
    googletest libgtest-dev libgmock-dev zlib1g-dev libturbojpeg0-dev libpng-dev
    libonnx-dev libprotobuf-dev protobuf-compiler
    libjs-chart.js
    dataset-fashion-mnist
)
want_ort=0
for arg in "$@"; do
    case "$arg" in
        --ort) want_ort=1 ;;
        --bench) packages+=(python3-torch python3-torchvision python3-onnx) ;;
        --browser) packages+=(chromium fonts-dejavu-core) ;;
        --fuzz) packages+=(clang libclang-rt-14-dev) ;;
        *) echo "setup: unknown option $arg (expected --ort, --bench, --browser or --fuzz)" >&2; exit 2 ;;
    esac
done
if ((want_ort)) && ! command -v node >/dev/null; then
    packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    sudo_cmd=(sudo)
fi
if ((${#missing[@]} > 0)); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "setup: all ${#packages[@]} Debian packages already installed"
fi

if ((want_ort)); then
    if [[ -f tools/ort/node_modules/onnxruntime-node/package.json ]]; then
        echo "setup: onnxruntime-node already installed"
    else
        echo "setup: installing onnxruntime-node into tools/ort"
        (cd tools/ort && npm install --ignore-scripts --no-audit --no-fund --loglevel=error)
    fi
fi
