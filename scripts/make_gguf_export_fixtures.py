"""Fixtures for bora-model's GGUF export tests (`crates/bora-model/tests/export_gguf.rs`):
llama.cpp's greedy tokens for the default model (SmolLM2-135M-Instruct Q4_1) with a seeded
random adapter, applied as bora's `gguf-lora` export and merged into bora's `gguf` exports.

    python3 scripts/make_gguf_export_fixtures.py

Steps: tokenize a few ChatML prompts with llama.cpp; have bora (the ignored test
`write_exports_for_llama_cpp`) build the adapter from the seed below and write the exports
with their built-in verification; run `scripts/check_gguf_exports.py` on them (gguf-py
reads every file, llama.cpp runs each one); keep llama.cpp's tokens in
`crates/bora-model/tests/fixtures/export_gguf/llama_cpp.json`. The Rust tests rebuild the same
adapter from the seed and compare bora's greedy tokens with llama.cpp's, without Python.

Needs `.venv-fixtures` (made here) and `.venv-bench` (llama-cpp-python; see bench/decode.py).
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ensure_venv  # noqa: E402

ensure_venv(__file__)

import check_gguf_exports as check  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/bora-model/tests/fixtures/export_gguf/llama_cpp.json"
# The adapter: rank 8 on all seven projections, alpha 16, A in ±1/√in, B in ±B_SCALE, from
# SplitMix64(SEED) in bora's tensor order. B_SCALE is large enough that the adapter changes
# every prompt's greedy reply (checked below), so a lost or misplaced adapter cannot pass.
SPEC = {"seed": 2026, "rank": 8, "alpha": 16.0, "b_scale": 0.25, "n_gen": 12}
TEXTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
]

TOKENIZE = r"""
import json, sys
from llama_cpp import Llama
job = json.load(sys.stdin)
llm = Llama(model_path=job["model"], n_ctx=64, verbose=False, vocab_only=True)
json.dump([llm.tokenize(t.encode(), add_bos=False, special=True) for t in job["texts"]],
          sys.stdout)
"""


def default_model():
    home = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora"))
    return home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    base = default_model()
    chats = [f"<|im_start|>user\n{t}<|im_end|>\n<|im_start|>assistant\n" for t in TEXTS]
    res = subprocess.run([str(check.BENCH_PYTHON), "-c", TOKENIZE], capture_output=True,
                         text=True, check=True,
                         input=json.dumps({"model": str(base), "texts": chats}))
    prompts = json.loads(res.stdout)
    with tempfile.TemporaryDirectory() as d:
        spec = dict(SPEC, prompts=prompts)
        (Path(d) / "spec.json").write_text(json.dumps(spec))
        subprocess.run(["cargo", "test", "--release", "-p", "bora-model", "--test", "export_gguf",
                        "write_exports_for_llama_cpp", "--", "--ignored", "--exact"],
                       cwd=ROOT, check=True, env=dict(os.environ, BORA_GGUF_EXPORT_DIR=d))
        summary = Path(d) / "summary.json"
        sys.argv = [sys.argv[0], "--base", str(base), "--dir", d, "--json", str(summary)]
        check.main()
        summary = json.loads(summary.read_text())
    runs = summary["llama_cpp"]
    cases = []
    for i, (text, ids) in enumerate(zip(TEXTS, prompts)):
        case = {"text": text, "ids": ids}
        for name, per_prompt in runs.items():
            case[name] = per_prompt[i]
        assert case["base"]["tokens"] != case["lora-f32"]["tokens"], f"prompt {i}: no effect"
        cases.append(case)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dict(SPEC, gguf_py=summary["gguf_py"], prompts=cases), indent=1)
                   + "\n")
    print("wrote", OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
