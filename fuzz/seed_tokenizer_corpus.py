#!/usr/bin/env python3
"""Seeds `fuzz/corpus/tokenizer/` (git-ignored) with small valid tokenizer files, so the
`tokenizer` fuzz target starts inside each loader instead of at its first format check.

Run from anywhere: `fuzz/seed_tokenizer_corpus.py` (it re-executes itself inside the repo's
`.venv-fixtures`). Each seed is the kind byte the target reads first (0 SentencePiece `.model.v3`,
1 Tekken JSON, 2 HF `tokenizer.json`, 3 GGUF) followed by the file: the tiny Tekken and HF files
under `crates/bora-tokenizer/tests/fixtures/encode/`, plus a byte-level HF BPE, a SentencePiece
BPE and two GGUF vocabularies (`llama` and `gpt2`) built here. Files are named by their SHA-1,
as libFuzzer names corpus entries.
"""
import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from fixture_venv import ensure_venv  # noqa: E402

ensure_venv(__file__)

import gguf  # noqa: E402
import sentencepiece  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

OUT = ROOT / "fuzz" / "corpus" / "tokenizer"
FIXTURES = ROOT / "crates" / "bora-tokenizer" / "tests" / "fixtures" / "encode"
SPM, TEKKEN, HF, GGUF = range(4)
TEXT = ["Hello world, hello wörld 123.", "The quick brown fox jumps over the lazy dog."] * 20


def put(kind: int, data: bytes) -> None:
    blob = bytes([kind]) + data
    (OUT / hashlib.sha1(blob).hexdigest()).write_bytes(blob)


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def tekken() -> None:
    data = json.loads((FIXTURES / "tekken_v13" / "tekken.json").read_text())
    # `token_str` only repeats `token_bytes`; dropping it keeps the seed small.
    for entry in data["vocab"]:
        entry.pop("token_str", None)
    put(TEKKEN, compact(data))


def hf() -> None:
    for name in ("hf_bytelevel", "hf_metaspace"):
        put(HF, compact(json.loads((FIXTURES / name / "tokenizer.json").read_text())))
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXT, trainer)
    put(HF, compact(json.loads(tok.to_str())))


def spm() -> None:
    # The identity normalizer without whitespace folding is the only one bora accepts.
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT),
        model_writer=model,
        vocab_size=320,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        byte_fallback=True,
        user_defined_symbols=["[INST]", "[/INST]"],
        minloglevel=2,
    )
    put(SPM, model.getvalue())


def gguf_vocab(model: str, add) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seed.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_tokenizer_model(model)
        add(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        put(GGUF, path.read_bytes())


def llama(writer) -> None:
    pieces = ["▁", "▁H", "el", "lo", "▁w"]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 259 + [-float(i + 1) for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def gpt2(writer) -> None:
    tokens = ["<|endoftext|>"] + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["Ġw", "He", "ll", "Hell"]
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(["Ġ w", "H e", "l l", "He ll"])
    writer.add_string("tokenizer.ggml.pre", "smollm")
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tekken()
    hf()
    spm()
    gguf_vocab("llama", llama)
    gguf_vocab("gpt2", gpt2)
    print(f"{len(list(OUT.iterdir()))} files in {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
