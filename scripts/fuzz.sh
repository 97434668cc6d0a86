#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for SECONDS (default 180), seeded from the test
# fixtures, and prints libFuzzer's final line per target (executions, coverage, corpus).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: every target)
# FUZZ_SANITIZER=none builds without AddressSanitizer (faster to build and run; panics,
# hangs and memory limits are still caught; out-of-bounds access in unsafe code is not).
# Needs `cargo install cargo-fuzz` and a nightly toolchain; without nightly it uses stable
# with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs the unstable `-Zsanitizer` flag). Crashes land in
# fuzz/artifacts/TARGET/; a target that crashes makes the script exit non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_EACH=${1:-180}
shift || true
TARGETS=("$@")
if [[ ${#TARGETS[@]} == 0 ]]; then
  TARGETS=(gguf safetensors tokenizer data chat_template config serve_request hub_responses api_responses gguf_export)
fi

if rustup toolchain list | grep -q '^nightly'; then
  CARGO=(cargo +nightly)
else
  echo "no nightly toolchain: building with stable and RUSTC_BOOTSTRAP=1"
  export RUSTC_BOOTSTRAP=1
  CARGO=(cargo)
fi

SANITIZER=${FUZZ_SANITIZER:-address}

SEEDS=fuzz/seeds
rm -rf "$SEEDS"
mkdir -p "$SEEDS"
seed() { # TARGET NAME: the seed's bytes on stdin
  mkdir -p "$SEEDS/$1" && cat >"$SEEDS/$1/$2"
}

# File parsers: every GGUF and safetensors fixture; tokenizer files with their kind byte.
mkdir -p "$SEEDS/gguf" "$SEEDS/safetensors"
for f in $(git ls-files '*.gguf'); do cp "$f" "$SEEDS/gguf/$(echo "$f" | tr / _)"; done
for f in $(git ls-files '*.safetensors'); do
  [[ $(stat -c %s "$f") -lt 300000 ]] && cp "$f" "$SEEDS/safetensors/$(echo "$f" | tr / _)"
done
for f in $(git ls-files 'crates/bora-tokenizer/tests/fixtures/encode/*/tokenizer.json'); do
  { printf '\x02'; cat "$f"; } | seed tokenizer "$(echo "$f" | tr / _)"
done
if [[ -x .venv-fixtures/bin/python ]]; then fuzz/seed_tokenizer_corpus.py >/dev/null; fi

# Dataset lines: every shape, tools, tool calls, weights.
i=0
while IFS= read -r line; do
  i=$((i + 1)); printf '%s' "$line" | seed data "line$i"
done <<'EOF'
{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "a", "weight": 0}, {"role": "user", "content": "again"}, {"role": "assistant", "content": "b", "weight": 1}]}
{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}, {"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": "22C"}, {"role": "assistant", "content": "22C and sunny."}], "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]}
{"prompt": "Translate: chat", "completion": "cat"}
{"text": "Plain text, every token trained. Ünïcödé 🙂"}
EOF

# Chat templates: each fixture's tokenizer_config.json, NUL, a conversation with tools.
CONV='{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}'
for f in $(git ls-files 'crates/bora-tokenizer/tests/fixtures/encode/*/tokenizer_config.json'); do
  { cat "$f"; printf '\0%s' "$CONV"; } | seed chat_template "$(echo "$f" | tr / _)"
done
printf '{"chat_template": "{%% for m in messages %%}{{ m.role }}: {{ m.content | trim }}{%% if loop.last %%}!{%% endif %%}\\n{%% endfor %%}{%% if add_generation_prompt %%}assistant:{%% endif %%}", "eos_token": "<|endoftext|>"}\0%s' "$CONV" |
  seed chat_template loop

# Run configs and overrides.
printf '[model]\npath = "m.gguf"\n[data]\ntrain = "d.jsonl"\nval_fraction = 0.1\n[lora]\nrank = 8\nalpha = 16.0\ntargets = ["q_proj", "v_proj"]\n[train]\nseq_len = 256\nlr = 1e-4\n\0lora.rank=32\ntrain.schedule="cosine"\noptim.betas=[0.9, 0.95]\n' |
  seed config basic

# Request bodies: first byte 0 = chat, 1 = text completion.
printf '\0{"model": "tiny", "messages": [{"role": "user", "content": "w3 w4"}], "max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "seed": 1, "stop": ["w5"]}' | seed serve_request chat
printf '\0{"model": "tiny", "messages": [{"role": "user", "content": "w3"}], "stream": true, "stream_options": {"include_usage": true}, "max_tokens": 3}' | seed serve_request stream
printf '\1{"model": "tiny", "prompt": "w3 w4 w5", "max_tokens": 2}' | seed serve_request completion

# Hub and W&B responses: status byte (0 = 200, 1 = 201, ...) then the body; NUL between.
printf '\0{"name": "user", "type": "user", "orgs": [{"name": "org", "roleInOrg": "write"}], "auth": {"type": "access_token", "accessToken": {"displayName": "t", "role": "write"}}}\0\1{"url": "https://hub/org/model"}\0\0{"files": [{"path": "README.md", "uploadMode": "regular", "shouldIgnore": false}, {"path": "adapter_model.safetensors", "uploadMode": "lfs", "shouldIgnore": false}]}\0\0{"objects": [{"oid": "x", "size": 2048}]}\0\0{"commitOid": "abc", "commitUrl": "https://hub/c"}' |
  seed hub_responses push
printf '\0{"data": {"upsertBucket": {"bucket": {"id": "r", "name": "abcdefgh", "displayName": "fuzz", "project": {"name": "p", "entity": {"name": "e"}}}}}}\0\0{"exitcode": null, "limits": {}}' |
  seed hub_responses wandb

# Jobs, chat, speech and Weave responses: status byte as above (10 = 200 audio/mpeg, 20 = 200
# text/event-stream), then the body; NUL between.
JOB='{"id": "job1", "status": {"stage": "RUNNING", "message": null}, "owner": {"name": "org"}, "flavor": "a10g-small", "labels": {"bora-run": "r1"}, "createdAt": "2026-01-01T00:00:00Z"}'
printf '\0%s\0\0%s\0\0[%s]\0\x14data: {"data": "step 1 loss 2.0", "timestamp": "t"}\n\ndata: {"data": "done"}\n\n\0\0{}\0\0{"id": "c", "object": "chat.completion", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "{\\"a\\": 4}"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}\0\x0aID3mp3' "$JOB" "$JOB" "$JOB" |
  seed api_responses jobs_chat_speech

printf '\0{"data": {"viewer": {"username": "u", "defaultEntity": {"name": "e"}}}}\0\0{"data": {"project": {"name": "p"}}}\0\0{"min_required_weave_python_version": "0.52.22"}\0\0{"digest": "abc"}' |
  seed api_responses weave

# GGUF export: kind, type, rank, scale (f32 LE), seed.
printf '\0\1\4\x00\x00\x80\x3e\0\1' | seed gguf_export merged_f16
printf '\1\0\2\x00\x00\x00\x3f\0\2' | seed gguf_export lora_f32

failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  seeds=()
  [[ -d "$SEEDS/$t" ]] && seeds=("$ROOT/$SEEDS/$t")
  log="fuzz/corpus/$t.log"
  echo "== $t (${SECONDS_EACH}s)"
  (cd fuzz && "${CARGO[@]}" fuzz run --sanitizer "$SANITIZER" "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1
  rc=$?
  grep -E "^#[0-9]+[[:space:]]+(DONE|INITED)" "$log" | tail -1
  grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$log"
  if [[ $rc != 0 ]]; then
    failed=1
    echo "$t: FAILED (rc $rc); see $log and fuzz/artifacts/$t/"
    grep -E 'panicked|ERROR: |SUMMARY' "$log" | head -5
  fi
done
exit $failed
