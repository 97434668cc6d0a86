#!/usr/bin/env python3
"""Reference token ids for bora-tokenizer, produced by mistral-common and HF tokenizers.

Run from anywhere: `scripts/make_tokenizer_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Needs `scripts/fetch-tokenizers.sh` and
`scripts/fetch-default-model.sh` to have run. Writes `crates/bora-tokenizer/tests/fixtures/encode/`:

- `<tokenizer file without .json>.json` for tokenizer.model.v1, the v2/v3/v7 SentencePiece models and both
  Tekken files: for every corpus text, `tokenizer.instruct_tokenizer.tokenizer.encode(text,
  bos=False, eos=False)` from mistral-common and its `decode`; plus `decode` cases, id lists
  (byte tokens cut inside a character, special tokens between them) with what mistral-common's
  `decode` returns for them.
- `smollm2.json`: the same for SmolLM2's GGUF vocabulary (`tokenizer.ggml.*` read by gguf-py),
  built as an HF `tokenizers` BPE with the pre-tokenizer of SmolLM2's own `tokenizer.json`
  and llama.cpp's `smollm` pre-type (single digits, then GPT-2's byte-level regex). `ids` keeps
  control tokens written in the text as text; `ids_special` parses them (HF's default).
  transformers' GGUF loader does not split digits for `smollm` and so differs from the model's
  own tokenizer on numbers; its ids are recorded as `ids_transformers_gguf` for the record.
- `tekken_v13/tekken.json` + `tekken_v13.json`: a tiny Tekken file in the newer format (version
  v13, its own `special_tokens` list, a vocabulary cut by `default_vocab_size`) written here,
  with mistral-common's ids for the corpus, as for the shipped files.
- `hf_bytelevel/` and `hf_metaspace/` (`tokenizer.json` + `tokenizer_config.json`) with
  `hf_bytelevel.json` / `hf_metaspace.json`: two small BPE vocabularies trained here by HF
  `tokenizers` on the corpus, one GPT-2 style (ByteLevel) and one Llama/Mistral style (Metaspace
  '▁' with byte fallback), each with special and non-special added tokens; ids and decoded
  text from HF `tokenizers`, as for SmolLM2.
"""
import json
import os
from importlib.metadata import version
import random
import sys
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import mistral_common  # noqa: E402
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy  # noqa: E402
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer  # noqa: E402
from mistral_common.tokens.tokenizers.tekken import Tekkenizer  # noqa: E402

BORA_HOME = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora"))
TOKENIZERS = BORA_HOME / "tokenizers"
GGUF = BORA_HOME / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "crates" / "bora-tokenizer" / "tests" / "fixtures" / "encode"
MISTRAL_FILES = [
    "tokenizer.model.v1",
    "mistral_instruct_tokenizer_240216.model.v2",
    "mistral_instruct_tokenizer_240323.model.v3",
    "mistral_instruct_tokenizer_241114.model.v7",
    "tekken_240718.json",
    "tekken_240911.json",
]


def corpus():
    texts = [
        "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n \t ", "a", "Hello world", " Hello",
        "Hello  world", "Hello world ", "   leading spaces", "trailing spaces   ", "a\tb\t\tc",
        "line1\nline2\r\nline3\n\n\nline6", "a" * 200, "ab" * 150, " " * 100, "\n" * 50,
        "\t" * 20, " \t" * 20, "word " * 60,
        # multilingual
        "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter en canoë au delà des îles.",
        "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. Straße, Maß, Fußgängerübergänge.",
        "我能吞下玻璃而不伤身体。机器学习是人工智能的一个分支。",
        "私はガラスを食べられます。それは私を傷つけません。カタカナとひらがな、漢字。",
        "أنا قادر على أكل الزجاج و هذا لا يؤلمني. مرحبا بالعالم",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती.",
        "안녕하세요 세계! Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. עברית: שלום",
        "ไทย: สวัสดีครับ  Tiếng Việt: Xin chào thế giới",
        # code
        "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        'fn main() {\n\tlet x: Vec<u32> = (0..10).collect();\n\tprintln!("{:?}", x);\n}\n',
        '{"key": [1, 2.5, null, true], "nested": {"a": "b\\n"}}',
        "<div class=\"x\">&amp; <b>bold</b></div>\n<!-- comment -->",
        "SELECT * FROM users WHERE id = 42 AND name LIKE '%o''k%';",
        "x+=1; y->z; a&&b || !c; i++; //comment\n/* block */ #include <stdio.h>",
        "https://example.com/path?q=1&r=two#frag user@example.org",
        # emoji
        "👋 Hello 🌍!", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag 🏴‍☠️", "👍🏽 skin tone 👩🏿‍💻", "🇫🇷🇩🇪🇯🇵",
        "😀😃😄😁😆😅🤣😂",
        # numbers
        "1234567890", "3.14159265358979323846264338327950288", "The year 2024 had 366 days.",
        "1,000,000 and 1e-10 and 0xDEADBEEF and -42", "١٢٣ ٤٥٦ ١٢", "１２３ full width", "12345678901234567890123",
        "v1.2.3 2024-11-26T17:22:09Z 99.9%",
        # control-token look-alikes in plain text
        "[INST] hello [/INST]", "<s>Hello</s>", "<|im_start|>user\nhi<|im_end|>\n",
        "[TOOL_CALLS][AVAILABLE_TOOLS][/AVAILABLE_TOOLS]", "<unk><pad>[IMG]", "<SPECIAL_20><SPECIAL_999>",
        "[REFERENCE_DOC_1] and [REF] x [/REF]", "[control_8]", "<0x0A> <0xFF>", "[SYSTEM_PROMPT]sys[/SYSTEM_PROMPT]",
        "<|endoftext|><repo_name>", "<|im_start|>", "[INST]", "<s>",
        # odd characters
        "can't won't I'm you're he'll we've they'd", "CamelCaseWord HTTPServer iPhone XMLHttpRequest",
        "a   b    c     d", "\u00a0nbsp\u2003em\u3000ideographic", "zero\u200bwidth\u200djoiner",
        "e\u0301 vs é", "ﬁ ligature ǅ titlecase", "Ω ≈ ç √ ∫ ∑ ∞ ≠", "\u2581 literal lower block ▁▁x",
        "\u0000 nul \u0001 soh \u007f del", "\ufffd replacement \U0010ffff max \ue000 private",
        "\U0001d400 math bold \U00020000 CJK ext B", "MiXeD cAsE wItH ümlaut ÄÖÜ",
        "tab\tthen space then newline\n", "  \n  \n", "end with newline\n", "\n\nstart with newlines",
        "'s 're 've 'm 'll 'd",
    ]
    rng = random.Random(20261126)
    pool = ("abcxyz ABC  \t\n\n0123456789.,;:!?'\"()[]{}<>/\\_-+=*&^%$#@~`|"
            "éèàçœßäöüñ" "αβγδ" "абвгд" "中文字符" "ひらがなカタカナ" "한국어" "العربية" "हिन्दी"
            "😀👍🏽🌍" "\u200d\ufe0f\u0301" "▁")
    for length in (50, 120, 300, 600):
        texts.append("".join(rng.choice(pool) for _ in range(length)))
    paragraph = ("Mistral AI fine-tuning: take a dataset, train LoRA adapters, evaluate against the base, "
                 "publish.  Numbers like 3.5 and 2,048 appear; so do URLs (https://mistral.ai) and code `x = 1`.\n")
    texts.append(paragraph * 8)
    return texts


def mistral_decode_cases(inner):
    """Id lists with byte tokens cut inside a character and special tokens between them."""
    text_ids = inner.encode("Grüße 👋 dir", bos=False, eos=False)
    if "tekken" in str(inner.file_path):
        n = inner.num_special_tokens
        byte = lambda b: n + b  # noqa: E731
    else:
        byte = lambda b: inner._model.piece_to_id(f"<0x{b:02X}>")  # noqa: E731
    bos, eos = inner.bos_id, inner.eos_id
    cut = [byte(b) for b in "中".encode()][:2]
    cases = [
        text_ids,
        [bos, *text_ids, eos],
        cut,
        [*cut, byte(ord("a"))],
        [*cut, bos, byte(0xB8), byte(0xAD)],
        [byte(b) for b in "👋".encode()],
        [byte(0xFF), byte(0xC0), byte(0x80)],
        [bos, eos, *inner.encode(" leading", bos=False, eos=False)],
        [byte(ord("x")), *inner.encode("y z", bos=False, eos=False)],
        [*inner.encode("a", bos=False, eos=False), *inner.encode("b", bos=False, eos=False)],
    ]
    out = []
    for ids in cases:
        out.append({"ids": ids, "policy": "skip", "text": inner.decode(ids)})
        if "tekken" in str(inner.file_path):
            out.append({"ids": ids, "policy": "keep",
                        "text": inner.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP)})
    return out


def mistral_fixture(name, path=None):
    if path is None:
        inner = MistralTokenizer.from_file(str(TOKENIZERS / name)).instruct_tokenizer.tokenizer
    else:  # a bare vocabulary without the instruct control tokens MistralTokenizer requires
        inner = Tekkenizer.from_file(str(path))
    cases = []
    for text in corpus():
        ids = inner.encode(text, bos=False, eos=False)
        cases.append({"text": text, "ids": ids, "decoded": inner.decode(ids)})
    return {
        "source": f"mistral-common {mistral_common.__version__}",
        "file": name,
        "vocab_size": inner.n_words,
        "bos_id": inner.bos_id,
        "eos_id": inner.eos_id,
        "encode": cases,
        "decode": mistral_decode_cases(inner),
    }


def smollm2_fixture():
    import gguf
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(str(GGUF))

    def field(key):
        return reader.fields[key].contents()

    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types) if ty in (3, 4)]
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in control])
    hf = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)

    def plain(text):
        tok.encode_special_tokens = True
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        return ids

    cases = []
    for text in corpus():
        ids = plain(text)
        cases.append({
            "text": text,
            "ids": ids,
            "ids_special": tok.encode(text, add_special_tokens=False).ids,
            "ids_transformers_gguf": hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"],
            "decoded": tok.decode(ids, skip_special_tokens=True),
        })
    byte_id = {b: vocab[ch] for b, ch in zip(range(256), _gpt2_chars()) if ch in vocab}
    cut = [byte_id[b] for b in "中".encode()][:2]
    im_start, im_end = vocab["<|im_start|>"], vocab["<|im_end|>"]
    hello = plain("Grüße 👋 dir")
    decode = []
    for ids in ([im_start, *hello, im_end], cut, [*cut, byte_id[ord("a")]], [*cut, im_start, byte_id[0xB8]]):
        for policy, skip in (("skip", True), ("keep", False)):
            decode.append({"ids": ids, "policy": policy, "text": tok.decode(ids, skip_special_tokens=skip)})
    return {
        "source": f"tokenizers {tokenizers.__version__}, vocabulary read by gguf {version('gguf')}",
        "file": GGUF.name,
        "vocab_size": len(tokens),
        "bos_id": int(field("tokenizer.ggml.bos_token_id")),
        "eos_id": int(field("tokenizer.ggml.eos_token_id")),
        "chat_template": field("tokenizer.chat_template"),
        "encode": cases,
        "decode": decode,
    }


def tekken_v13_file():
    """A small Tekken file with a `special_tokens` list (the format of files newer than v7)."""
    import base64

    def entry(rank, token):
        return {"rank": rank, "token_bytes": base64.b64encode(token).decode(), "token_str": None}

    merges = [b"ab", b"abc", b" t", b" th", b"he", b" the", "é".encode(), b"in", b" in", b"  ", b"\n\n"]
    vocab = [entry(i, bytes([i])) for i in range(256)] + [entry(256 + i, m) for i, m in enumerate(merges)]
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[THINK]", "[/THINK]"]
    pattern = json.loads((TOKENIZERS / "tekken_240911.json").read_text())["config"]["pattern"]
    num_special = 12
    data = {
        "config": {"pattern": pattern, "num_vocab_tokens": len(vocab), "version": "v13",
                   "default_num_special_tokens": num_special,
                   # the last two merges fall outside the vocabulary actually used
                   "default_vocab_size": num_special + len(vocab) - 2},
        "vocab": vocab,
        "special_tokens": [{"rank": i, "token_str": t, "is_control": True} for i, t in enumerate(specials)],
    }
    path = OUT / "tekken_v13" / "tekken.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def hf_fixture(style):
    import tokenizers
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, trainers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    if style == "bytelevel":
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok = tokenizers.Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
        tok.decoder = decoders.Sequence([
            decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
        ])
        specials = ["<unk>", "<s>", "</s>", *specials]
        alphabet = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(corpus() * 2, trainer)
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    directory = OUT / f"hf_{style}"
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    bos, eos = ("<|im_start|>", "<|im_end|>") if style == "bytelevel" else ("<s>", "</s>")
    config = {"bos_token": bos, "eos_token": {"content": eos, "special": True},
              "chat_template": [{"name": "default", "template": "{% for m in messages %}{{ m.content }}{% endfor %}"},
                                {"name": "tool_use", "template": "tools"}]}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def plain(text):
        tok.encode_special_tokens = True
        ids = tok.encode(text, add_special_tokens=False).ids
        tok.encode_special_tokens = False
        return ids

    cases = []
    for text in corpus() + ["<think>x</think> <|im_start|>a<|im_end|>"]:
        ids = plain(text)
        cases.append({"text": text, "ids": ids, "ids_special": tok.encode(text, add_special_tokens=False).ids,
                      "decoded": tok.decode(ids, skip_special_tokens=True)})
    im_start = tok.token_to_id("<|im_start|>")
    decode = []
    for ids in ([im_start, *plain("Grüße 👋 dir")], [im_start, *plain(" leading"), im_start]):
        for policy, skip in (("skip", True), ("keep", False)):
            decode.append({"ids": ids, "policy": policy, "text": tok.decode(ids, skip_special_tokens=skip)})
    return {
        "source": f"tokenizers {tokenizers.__version__}",
        "file": f"hf_{style}/tokenizer.json",
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "bos_id": tok.token_to_id(bos),
        "eos_id": tok.token_to_id(eos),
        "chat_template": config["chat_template"][0]["template"],
        "encode": cases,
        "decode": decode,
    }


def _gpt2_chars():
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def write(name, data):
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name.removesuffix('.json')}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n")
    os.replace(tmp, path)
    print(path.relative_to(ROOT), len(data["encode"]), "texts")


def main():
    for name in MISTRAL_FILES:
        if not (TOKENIZERS / name).exists():
            sys.exit(f"{TOKENIZERS / name} is missing: run scripts/fetch-tokenizers.sh")
    if not GGUF.exists():
        sys.exit(f"{GGUF} is missing: run scripts/fetch-default-model.sh")
    for name in MISTRAL_FILES:
        write(name, mistral_fixture(name))
    write("tekken_v13", mistral_fixture("tekken_v13/tekken.json", tekken_v13_file()))
    write("smollm2", smollm2_fixture())
    for style in ("bytelevel", "metaspace"):
        write(f"hf_{style}", hf_fixture(style))


if __name__ == "__main__":
    main()
