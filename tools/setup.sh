#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what pocketflow needs from Debian's packages, only what is missing. Idempotent; run as root
# (or with sudo available) on Debian 12.
#   tools/setup.sh            build + runtime dependencies
#   tools/setup.sh --bench    also python3-torch (for tools/bench comparisons only)
set -euo pipefail

packages=(
    build-essential cmake ninja-build ccache pkg-config
    libtorch-dev libgloo-dev libopenblas0-pthread
    libyaml-cpp-dev libcli11-dev libspdlog-dev libfmt-dev libeigen3-dev nlohmann-json3-dev
    googletest libgtest-dev libgmock-dev zlib1g-dev libturbojpeg0-dev libpng-dev
    libonnx-dev libprotobuf-dev protobuf-compiler
    dataset-fashion-mnist
)
if [[ "${1:-}" == "--bench" ]]; then
    packages+=(python3-torch)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "setup: all ${#packages[@]} packages already installed"
    exit 0
fi

echo "setup: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
    sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
