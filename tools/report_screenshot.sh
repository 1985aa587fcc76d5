#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A report of run/sweep directories and a PNG of it taken in headless Chromium (tools/setup.sh
# --browser installs it). The HTML is written beside the PNG.
#   tools/report_screenshot.sh OUT.png RUN_DIR... [-- REPORT_OPTIONS]
# HEIGHT (default 2400) and WIDTH (default 1280) set the window, in CSS pixels.
set -euo pipefail
if (($# < 2)); then
    echo "usage: tools/report_screenshot.sh OUT.png RUN_DIR... [-- REPORT_OPTIONS]" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
png="$1"
shift
dirs=()
while (($# > 0)) && [[ "$1" != "--" ]]; do
    dirs+=("$1")
    shift
done
[[ "${1:-}" == "--" ]] && shift
browser="${POCKETFLOW_CHROMIUM:-$(command -v chromium || true)}"
if [[ -z "$browser" ]]; then
    echo "report_screenshot: chromium not found: run tools/setup.sh --browser" >&2
    exit 2
fi
html="${png%.png}.html"
"${POCKETFLOW:-$root/build/bin/pocketflow}" report "${dirs[@]}" -o "$html" "$@"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
if ! timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --hide-scrollbars --user-data-dir="$profile" \
    --window-size="${WIDTH:-1280},${HEIGHT:-2400}" --screenshot="$png" \
    "file://$(realpath "$html")" 2>"$profile/chromium.log"; then
    tail -20 "$profile/chromium.log" >&2
    echo "report_screenshot: chromium failed (or timed out after 120 s)" >&2
    exit 1
fi
echo "report_screenshot: $png ($(stat -c %s "$png") bytes) of $html"
