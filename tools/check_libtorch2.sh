#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds this checkout against LibTorch 2.x and runs the test suite there: a Debian 13 (trixie)
# chroot, whose libtorch-dev is PyTorch 2.6 (CPU, Gloo), with trixie's versions of every other
# dependency. Needs root (debootstrap, chroot, mounts) and Debian's mirror; about 1 GiB of disk and
# 20 minutes on 2 cores the first time (the chroot is kept for reruns).
#   tools/check_libtorch2.sh [CHROOT_DIR] [-- ctest arguments]     (default /srv/trixie)
# Prints ctest's summary; exit status: ctest's.
set -euo pipefail
cd "$(dirname "$0")/.."
root=/srv/trixie
if [[ $# -gt 0 && "$1" != "--" ]]; then root=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
[[ $(id -u) -eq 0 ]] || { echo "check_libtorch2.sh: run as root (debootstrap and chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap
if [[ ! -x "$root/usr/bin/apt-get" ]]; then
    echo "check_libtorch2.sh: creating a Debian 13 chroot in $root"
    debootstrap --variant=minbase --include=ca-certificates trixie "$root" http://deb.debian.org/debian
fi
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The same packages as tools/setup.sh, in their Debian 13 versions.
chroot "$root" bash -c "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq &&
    apt-get install -y -qq --no-install-recommends build-essential cmake ninja-build pkg-config \
    libtorch-dev libgloo-dev libopenblas0-pthread libdnnl-dev libyaml-cpp-dev libcli11-dev \
    libspdlog-dev libfmt-dev libeigen3-dev nlohmann-json3-dev googletest libgtest-dev libgmock-dev \
    zlib1g-dev libturbojpeg0-dev libpng-dev libonnx-dev libprotobuf-dev protobuf-compiler \
    libjs-chart.js dataset-fashion-mnist python3 chromium fonts-dejavu-core >/dev/null"
rm -rf "$root/src" && mkdir -p "$root/src"
git ls-files -z | xargs -0 cp --parents -t "$root/src"
chroot "$root" bash -c "cd /src && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    ninja -C build >/dev/null && echo \"built against LibTorch \$(dpkg-query -W -f='\${Version}' libtorch-dev)\" &&
    cd build && ctest --parallel $(nproc) --timeout 600 $* | tail -25"
