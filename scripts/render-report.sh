#!/usr/bin/env bash
# Renders an eval report (report.html) to a PNG in headless Chromium, to check how it looks.
# Usage: scripts/render-report.sh runs/NAME/eval/report.html [OUT.png]
# Needs Debian's chromium (apt-get install -y chromium). The page is self-contained; the
# flags keep Chromium off the network and away from the user's profile.
set -euo pipefail
html=${1:?usage: $0 REPORT.html [OUT.png]}
out=${2:-${html%.html}.png}
[ -f "$html" ] || { echo "$html: no such file" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "chromium not found; apt-get install -y chromium" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$(realpath -m "$out")" --window-size=1200,1600 \
  "file://$(realpath "$html")" >/dev/null 2>&1
echo "$out"
