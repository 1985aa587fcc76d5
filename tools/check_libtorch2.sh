#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds this checkout against LibTorch 2.x and runs the test suite there: a Debian 13 (trixie)
# chroot, whose libtorch-dev is PyTorch 2.6 (CPU, Gloo), with trixie's versions of every other
# dependency, installed by tools/setup.sh --ort --browser inside it. Needs root (debootstrap,
# chroot, mounts), Debian's mirror and npm's registry; about 2 GiB of disk and 25 minutes on 2 cores
# the first time (the chroot and its build directory are kept: reruns are incremental).
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
# This machine's extra certificate authorities (an egress proxy's), for apt and npm in the chroot.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
fi
# The sources (the chroot's build/ is kept: reruns build incrementally), then the project's own
# setup in the chroot: Debian 13's versions of the same packages, ONNX Runtime and chromium.
mkdir -p "$root/src"
find "$root/src" -mindepth 1 -maxdepth 1 ! -name build ! -name tools -exec rm -rf {} +
find "$root/src/tools" -mindepth 1 -maxdepth 1 ! -name ort -exec rm -rf {} + 2>/dev/null || true
git ls-files -z | xargs -0 cp -p --parents -t "$root/src"  # -p: mtimes, for ninja
chroot "$root" bash -c "export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt;
    cd /src && tools/setup.sh --ort --browser >/dev/null"
chroot "$root" bash -c "cd /src && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null &&
    ninja -C build >/dev/null && echo \"built against LibTorch \$(dpkg-query -W -f='\${Version}' libtorch-dev)\" &&
    cd build && ctest --parallel $(nproc) --timeout 600 $* | tail -25"
