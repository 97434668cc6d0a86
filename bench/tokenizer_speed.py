#!/usr/bin/env python3
"""Tokenizer throughput: bora against mistral-common and HF tokenizers, Tekken and SentencePiece v3.

All three encode the same 10 MB text as one string (no BOS/EOS), single process each, best of
three runs; the script checks that all three produce the same ids and prints MB/s and ratios.
The text is the first 10 MB of the Python standard library's own `.py` sources (real code,
comments and docstrings, no artificial repetition). Run from the repo root:

    .venv-fixtures/bin/python bench/tokenizer_speed.py [--mb 10] [--repeats 3]

`.venv-fixtures` is made by `scripts/make_tokenizer_fixtures.py`; the tokenizer files by
`scripts/fetch-tokenizers.sh`. bora's side is `cargo run --release -p bora-tokenizer --example
tokenize_bench`, built by this script.
"""
import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKENIZERS = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora")) / "tokenizers"
FILES = {"tekken": "tekken_240911.json", "spm-v3": "mistral_instruct_tokenizer_240323.model.v3"}


def corpus(n_bytes):
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = bytearray()
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or len(out) >= n_bytes:
            continue
        out += path.read_bytes()
    return out[:n_bytes].decode("utf-8", "ignore")


def checksum(ids):
    """Position-weighted sum mod 2^64, as the Rust example computes it."""
    return sum((i + 1) * t for i, t in enumerate(ids)) % (1 << 64)


def best_of(repeats, fn):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def hf_tokenizer(kind, path):
    """The same vocabulary as an HF `tokenizers` object, built the way transformers converts it."""
    if kind == "tekken":
        from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer
        return convert_tekken_tokenizer(str(path)).backend_tokenizer
    # transformers' LlamaConverter needs protobuf; this is its construction from the
    # sentencepiece model (BPE with merges ordered by piece score, byte fallback, '▁' prepended
    # and replacing spaces).
    import sentencepiece
    import tokenizers
    from tokenizers import decoders, models, normalizers
    from transformers.tokenization_utils_base import generate_merges
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges = generate_merges(vocab, {p: sp.get_score(i) for p, i in vocab.items()})
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                                          fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text = corpus(int(args.mb * 1e6))
    mb = len(text.encode()) / 1e6
    subprocess.check_call(["cargo", "build", "--quiet", "--release", "-p", "bora-tokenizer", "--example",
                           "tokenize_bench"], cwd=ROOT)
    binary = ROOT / "target" / "release" / "examples" / "tokenize_bench"

    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    with tempfile.NamedTemporaryFile("w", suffix=".txt", newline="", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        print(f"text: {mb:.2f} MB of Python stdlib sources; best of {args.repeats}; one thread each")
        print(f"{'tokenizer':<8} {'engine':<15} {'tokens':>9} {'seconds':>8} {'MB/s':>7} {'bora is':>9}  ids")
        for kind, name in FILES.items():
            path = TOKENIZERS / name
            run = subprocess.run([str(binary), str(path), f.name, str(args.repeats)], check=True,
                                 capture_output=True, text=True)
            bora = json.loads(run.stdout)
            inner = MistralTokenizer.from_file(str(path)).instruct_tokenizer.tokenizer
            mc_time, mc_ids = best_of(args.repeats, lambda: inner.encode(text, bos=False, eos=False))
            hf = hf_tokenizer(kind, path)
            # Control tokens written in the text ("<s>" appears in C sources) stay text, as in
            # mistral-common's encode and bora's.
            hf.encode_special_tokens = True
            hf_time, hf_ids = best_of(args.repeats, lambda: hf.encode(text, add_special_tokens=False).ids)
            rows = [("bora", bora["tokens"], bora["seconds"], bora["checksum"]),
                    ("mistral-common", len(mc_ids), mc_time, checksum(mc_ids)),
                    ("hf tokenizers", len(hf_ids), hf_time, checksum(hf_ids))]
            for engine, n, seconds, cs in rows:
                ratio = seconds / bora["seconds"]
                same = "same" if cs == bora["checksum"] and n == bora["tokens"] else "DIFFERENT"
                print(f"{kind:<8} {engine:<15} {n:>9} {seconds:>8.3f} {mb / seconds:>7.2f} "
                      f"{ratio:>8.1f}x  {same}")


if __name__ == "__main__":
    main()
