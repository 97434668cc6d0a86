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
cargo test --workspace --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# `bora serve` against the real `openai` Python client (it installs the client into .venv-serve).
if BORA_BIN="${CARGO_TARGET_DIR:-target}/release/bora" python3 scripts/test_serve_openai.py 2>&1 | tee -a "$log"; then
  echo "test result: ok. 1 passed; 0 failed; 0 ignored (openai client against bora serve)" | tee -a "$log"
else
  echo "test result: FAILED. 0 passed; 1 failed; 0 ignored (openai client against bora serve)" | tee -a "$log"
  status=1
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
