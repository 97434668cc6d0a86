#!/usr/bin/env bash
# The test command of the README: fetch what the tests read (default model, Mistral tokenizer
# files; both pinned by sha256), then run every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
if [[ -x scripts/fetch-tokenizers.sh ]]; then
  scripts/fetch-tokenizers.sh >/dev/null
fi
cargo test --workspace --release "$@"
