#!/usr/bin/env bash
# The test command of the README: fetch what the tests read (default model, Mistral tokenizer
# files, both pinned by sha256; moto's S3 server, pinned, for the Bedrock tests), then run
# every test of the workspace and close with one summary line over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-default-model.sh >/dev/null
scripts/fetch-tokenizers.sh >/dev/null
# The S3 server `bora deploy bedrock`'s tests upload to (moto's, pinned, into .venv-aws).
python3 scripts/aws_test_venv.py >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
# The run above takes the widest kernel path this CPU has; the narrower ones (AVX2 and
# portable on an AVX-512 machine) run the kernels' tests and the model's exactness tests
# again, forced through BORA_CPU, so a path that is not this machine's default cannot rot.
# A path the CPU lacks is refused by bora itself, and skipped here.
bora="${CARGO_TARGET_DIR:-target}/release/bora"
for path in avx2 portable; do
  if ! BORA_CPU="$path" "$bora" default-model >/dev/null 2>&1; then
    echo "kernel path $path: not supported by this CPU, skipped" | tee -a "$log"
    continue
  fi
  echo "== kernel path $path (BORA_CPU=$path)" | tee -a "$log"
  BORA_CPU="$path" cargo test --release --no-fail-fast -p bora-compute "$@" 2>&1 \
    | tee -a "$log" || status=$?
  # decode_batch's many-sequence steps take minutes on the portable kernels; AVX2 runs it.
  model_tests=(--test smollm2 --test lora_grad --test tiny_models)
  [ "$path" = avx2 ] && model_tests+=(--test decode_batch)
  BORA_CPU="$path" cargo test --release --no-fail-fast -p bora-model "${model_tests[@]}" "$@" 2>&1 \
    | tee -a "$log" || status=$?
done
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
