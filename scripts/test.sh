#!/usr/bin/env bash
# The test command of the README: fetch what the tests read (default model, Mistral tokenizer
# files; both pinned by sha256), then run every test of the workspace and close with one
# summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
scripts/fetch-tokenizers.sh >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
