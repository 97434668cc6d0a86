#!/usr/bin/env bash
# Fetch Mistral's tokenizer files (SentencePiece v1/v2/v3/v7 and Tekken) from the
# mistral-common wheel on PyPI into $BORA_HOME/tokenizers (default ~/.cache/bora/tokenizers),
# without installing the Python library. bora-tokenizer's tests read them from there.
# Idempotent: files already in place with the right sha256 are kept.
set -euo pipefail

VERSION=1.13.1
CACHE="${BORA_HOME:-$HOME/.cache/bora}/tokenizers"
# name sha256 (of mistral_common/data/<name> in mistral-common==$VERSION)
FILES=(
  "tokenizer.model.v1 dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
  "mistral_instruct_tokenizer_240216.model.v2 37f00374dea48658ee8f5d0f21895b9bc55cb0103939607c8185bfd1c6ca1f89"
  "mistral_instruct_tokenizer_240323.model.v3 9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33"
  "mistral_instruct_tokenizer_241114.model.v7 1b968b8dc352f42192367337c78ccc61e1eaddc6d641a579372d4f20694beb7a"
  "mistral_instruct_tokenizer_241114.model.v7m1 1b968b8dc352f42192367337c78ccc61e1eaddc6d641a579372d4f20694beb7a"
  "tekken_240718.json eccd1665d2e477697c33cb7f0daa6f6dfefc57a0a6bceb66d4be52952f827516"
  "tekken_240911.json 1948e2d48b0e7377f1bb5f1210f1ae5f984934e75713fc07e2452729b8365316"
)

ok() { [[ -f "$CACHE/$1" ]] && echo "$2  $CACHE/$1" | sha256sum --check --status; }

missing=0
for entry in "${FILES[@]}"; do
  read -r name sha <<<"$entry"
  ok "$name" "$sha" || missing=1
done
if [[ $missing == 0 ]]; then
  echo "$CACHE"
  exit 0
fi

mkdir -p "$CACHE"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "mistral-common==$VERSION" >&2
wheel="$(ls "$work"/mistral_common-*.whl)"
for entry in "${FILES[@]}"; do
  read -r name sha <<<"$entry"
  ok "$name" "$sha" && continue
  python3 - "$wheel" "mistral_common/data/$name" "$CACHE/$name.partial" <<'PY'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  if ! echo "$sha  $CACHE/$name.partial" | sha256sum --check --status; then
    rm -f "$CACHE/$name.partial"
    echo "error: $name from mistral-common==$VERSION does not have sha256 $sha" >&2
    exit 1
  fi
  mv "$CACHE/$name.partial" "$CACHE/$name"
done
echo "$CACHE"
