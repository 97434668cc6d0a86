#!/usr/bin/env python3
"""External proof of `bora export`: the reference libraries load what bora wrote.

Run from anywhere: `scripts/check_exports.py [--bora PATH]` (it re-executes itself inside the
repo's `.venv-fixtures`; without --bora it builds `target/release/bora`). Exits non-zero on the
first mismatch, naming it.

1. Tiny fixture models (`crates/bora-model/tests/fixtures/tiny/`) with a PEFT adapter, exported
   from an HF directory, a GGUF file and a Mistral consolidated directory:
   - the `peft` export loads with `PeftModel.from_pretrained` on the HF base and gives the
     logits of the original adapter (fp32; relative 1e-5 of the largest logit);
   - the `merged` export loads with `AutoModelForCausalLM.from_pretrained` and gives the same
     logits (f32: 1e-4; bf16: 8e-2, bora's own bf16 tolerance).
   bora reproducing those reference logits itself is `crates/bora-model/tests/
   export_reference.rs`, from fixtures this repo's `scripts/make_export_fixtures.py` writes.
2. The default model (SmolLM2-135M-Instruct Q4_1 GGUF), when fetched: the `merged` export
   (bf16, no adapter) loads in transformers with the tokenizer bora writes from the GGUF
   vocabulary; its token ids equal bora's on a mixed corpus and on a chat with the GGUF's
   chat template, and its logits equal transformers' own reading of the GGUF (within bf16's
   tolerance).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

FIX = ROOT / "crates" / "bora-model" / "tests" / "fixtures"
TINY = FIX / "tiny"
CASES = [
    # (HF base for the reference, base bora exports from, adapter)
    ("llama", TINY / "llama", FIX / "lora" / "llama_adapter"),
    ("llama", TINY / "llama.gguf", FIX / "lora" / "llama_adapter"),
    ("mistral_v01", TINY / "mistral_v01", FIX / "export" / "mistral_v01_adapter"),
    ("mistral_v01", TINY / "mistral_v01_consolidated", FIX / "export" / "mistral_v01_adapter"),
]
CORPUS = (
    "Hello world! The quick brown fox jumps over the lazy dog.\n"
    "  Indented line with   several spaces\tand a tab.\n\n"
    "Numbers: 3.14159, 2026-11-26, 1234567890 and 42nd.\n"
    "def f(x):\n    return x ** 2  # squares\n"
    "Unicode: café, naïve, Straße, 日本語のテキスト, emoji 🤖🚀, Ελληνικά.\n"
    "URLs like https://huggingface.co/HuggingFaceTB and e-mail a.b@example.com.\n"
)
CHAT = {"messages": [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3×3?"},
]}


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def rel_err(ref, got):
    return float((ref - got).abs().max() / ref.abs().max())


def bora_cmd(bora, *args):
    out = subprocess.run([str(bora), *map(str, args)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(f"bora {' '.join(map(str, args))}:\n{out.stderr}")
    return out.stdout


def prompts(vocab):
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, vocab, (n,), generator=g) for n in (7, 16)]


def model_logits(model, ps):
    with torch.no_grad():
        return [model(input_ids=p[None]).logits[0].float() for p in ps]


def hf(path, **kw):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", **kw
    ).eval()


def check_tiny(bora, tmp):
    for i, (name, base, adapter) in enumerate(CASES):
        ref_model = PeftModel.from_pretrained(hf(TINY / name), str(adapter)).eval()
        ps = prompts(ref_model.config.vocab_size)
        ref = model_logits(ref_model, ps)
        out = tmp / f"case{i}"
        common = ["--model", base, "--adapter", adapter]
        bora_cmd(bora, "export", *common, "--format", "peft", "--out", out / "peft")
        got = model_logits(PeftModel.from_pretrained(hf(TINY / name), str(out / "peft")), ps)
        for r, g in zip(ref, got):
            if rel_err(r, g) > 1e-5:
                fail(f"{base.name}: peft export differs by {rel_err(r, g):.3e}")
        for dtype, tol in (("f32", 1e-4), ("bf16", 8e-2)):
            dest = out / f"merged-{dtype}"
            bora_cmd(bora, "export", *common, "--format", "merged", "--dtype", dtype,
                     "--out", dest)
            got = model_logits(hf(dest), ps)
            worst = max(rel_err(r, g) for r, g in zip(ref, got))
            if worst > tol:
                fail(f"{base.name}: merged {dtype} export differs by {worst:.3e} (> {tol})")
            print(f"ok  {base.name}: peft and merged {dtype} load in peft/transformers "
                  f"(merged error {worst:.2e})")


def default_model():
    home = os.environ.get("BORA_HOME") or str(Path.home() / ".cache" / "bora")
    return Path(home) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def check_smollm2(bora, tmp):
    gguf = default_model()
    if not gguf.is_file():
        print(f"skip SmolLM2: {gguf} is not fetched (scripts/fetch-default-model.sh)")
        return
    dest = tmp / "smollm2-merged"
    bora_cmd(bora, "export", "--model", gguf, "--format", "merged", "--out", dest)
    tok = AutoTokenizer.from_pretrained(dest)
    corpus = tmp / "corpus.txt"
    corpus.write_text(CORPUS)
    ours = json.loads(bora_cmd(bora, "tokenize", "--tokenizer", gguf, "--file", corpus,
                               "--json"))["ids"]
    theirs = tok(CORPUS, add_special_tokens=False)["input_ids"]
    if ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        fail(f"SmolLM2 corpus ids differ at {first}: bora {ours[first:first + 5]}, "
             f"transformers {theirs[first:first + 5]}")
    conv = tmp / "chat.json"
    conv.write_text(json.dumps(CHAT))
    ours = json.loads(bora_cmd(bora, "tokenize", "--tokenizer", gguf, "--chat", conv,
                               "--add-generation-prompt", "--json"))["ids"]
    theirs = tok.apply_chat_template(CHAT["messages"], add_generation_prompt=True, tokenize=True)
    if hasattr(theirs, "input_ids"):
        theirs = theirs["input_ids"]
    if list(ours) != list(theirs):
        fail(f"SmolLM2 chat ids differ:\nbora         {ours}\ntransformers {theirs}")
    print(f"ok  SmolLM2 tokenizer.json: {len(ours)} chat ids and the corpus match bora")
    ps = [torch.tensor(tok(t, add_special_tokens=False)["input_ids"]) for t in
          ("The capital of France is", "def fibonacci(n):")]
    ref = model_logits(hf(gguf.parent, gguf_file=gguf.name), ps)
    got = model_logits(hf(dest), ps)
    worst = max(rel_err(r, g) for r, g in zip(ref, got))
    if worst > 8e-2:
        fail(f"SmolLM2 merged export differs from transformers' GGUF reading by {worst:.3e}")
    print(f"ok  SmolLM2 merged bf16 export loads in transformers (error {worst:.2e})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bora", type=Path, help="bora binary (default: build target/release/bora)")
    args = ap.parse_args()
    bora = args.bora
    if bora is None:
        subprocess.check_call(["cargo", "build", "--release", "-p", "bora"], cwd=ROOT)
        bora = ROOT / "target" / "release" / "bora"
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        check_tiny(bora, tmp)
        check_smollm2(bora, tmp)
    print("all exports load in the reference libraries")


if __name__ == "__main__":
    main()
