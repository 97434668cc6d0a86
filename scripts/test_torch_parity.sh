#!/usr/bin/env bash
# The torch trainer's tests: `bora train --on torch` against `bora train` on tiny Llama,
# Mistral and Nemo models (crates/bora/tests/torch_parity.rs), and the real
# Hugging Face Job: the command bora posts, run as a local process by the test Jobs API
# against the test Hub (upload, resume, two processes under torchrun; the ignored tests of
# crates/bora/tests/hf_jobs_cli.rs). Not part of scripts/test.sh: the environment (torch from
# PyPI with its CUDA libraries) is several GB.
# Creates or reuses `.venv-torch` at the repo root with trainers/torch/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-torch/bin/python ]; then
  python3 -m venv .venv-torch
fi
.venv-torch/bin/pip install --quiet -r trainers/torch/requirements.txt
export BORA_TORCH_PYTHON="$PWD/.venv-torch/bin/python"
cargo test --release --workspace --test torch_parity -- --ignored --test-threads=1 "$@"
cargo test --release --workspace --test hf_jobs_cli -- --ignored --test-threads=1 "$@"
