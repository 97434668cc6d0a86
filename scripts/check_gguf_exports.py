"""External proof of bora's GGUF exports (issue #6): the `gguf` package reads them, and
llama.cpp (llama-cpp-python) runs them.

    .venv-fixtures/bin/python scripts/check_gguf_exports.py --base BASE.gguf --dir DIR

DIR holds what `bora export` (or the `write_exports_for_llama_cpp` test) wrote:
`adapter-f32.gguf`, `adapter-f16.gguf` (gguf-lora) and `merged-{f16,q8_0,q4_1}.gguf`
(gguf), plus `spec.json` (prompt token ids, `n_gen`) and `bora.json` (bora's greedy tokens
per prompt: `lora` with the adapter in memory, `base` without, `merged-T` running the
reloaded merged file). The script checks with gguf-py that
every file has the names, shapes, types and metadata llama.cpp needs, then runs llama.cpp on
the base with each adapter (`Llama(model_path=BASE, lora_path=...)`) and on each merged file,
greedy, from the same token ids, and prints how many tokens agree with bora's. With `--json
OUT` it writes llama.cpp's tokens (and each step's top-1/top-2 logit margin) for the fixture.

gguf-py runs here (`.venv-fixtures`); llama.cpp runs in `.venv-bench` (built by the bench
scripts), in a subprocess, since the two venvs are separate.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
MERGED = ["f16", "q8_0", "q4_1"]
ADAPTERS = ["f32", "f16"]
PROJECTIONS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]

# Runs inside .venv-bench: greedy decoding from token ids, one model per call.
LLAMA_CPP = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.load(sys.stdin)
# logits_all: without it this llama-cpp-python leaves `scores` zero. A fresh context per
# prompt: reset() does not free the KV cells of the previous prompt.
kw = dict(model_path=job["model"], n_ctx=512, n_threads=2, verbose=False, logits_all=True)
if job.get("lora"):
    kw["lora_path"] = job["lora"]
out = []
for ids in job["prompts"]:
    llm = Llama(**kw)
    llm.eval(ids)
    toks, margins = [], []
    for _ in range(job["n_gen"]):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(logits)[::-1][:2]
        toks.append(int(top[0]))
        margins.append(float(logits[top[0]] - logits[top[1]]))
        llm.eval([int(top[0])])
    out.append({"tokens": toks, "margins": margins})
json.dump(out, sys.stdout)
"""


def llama_cpp_greedy(model, lora, prompts, n_gen):
    job = json.dumps({"model": str(model), "lora": str(lora) if lora else None,
                      "prompts": prompts, "n_gen": n_gen})
    res = subprocess.run([str(BENCH_PYTHON), "-c", LLAMA_CPP], input=job, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout)


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def check_adapter(path, base, dtype):
    import gguf
    r = gguf.GGUFReader(path)
    assert field(r, "general.type") == "adapter", path
    assert field(r, "adapter.type") == "lora", path
    assert field(r, "general.architecture") == field(base, "general.architecture"), path
    alpha = field(r, "adapter.lora.alpha")
    assert isinstance(alpha, float) and alpha > 0, path
    base_t = {t.name: t for t in base.tensors}
    names = {t.name for t in r.tensors}
    n_layers = field(base, "llama.block_count")
    want = {f"blk.{i}.{p}.weight.lora_{ab}" for i in range(n_layers) for p in PROJECTIONS
            for ab in "ab"}
    assert names == want, f"{path}: tensor names differ: {sorted(names ^ want)[:4]}"
    ranks = set()
    for t in r.tensors:
        assert t.tensor_type.name == dtype.upper(), (t.name, t.tensor_type.name)
        b = base_t[t.name.rsplit(".", 1)[0]]
        ne = [int(x) for x in t.shape]  # gguf-py reports ggml order (ne0 first)
        if t.name.endswith("lora_a"):
            assert ne[0] == int(b.shape[0]), (t.name, ne, list(b.shape))  # base.ne0 == a.ne0
            ranks.add(ne[1])
        else:
            assert ne[1] == int(b.shape[1]), (t.name, ne, list(b.shape))  # base.ne1 == b.ne1
            ranks.add(ne[0])
    assert len(ranks) == 1, ranks
    return {"tensors": len(r.tensors), "rank": ranks.pop(), "alpha": alpha, "type": dtype}


def check_merged(path, base, dtype):
    import gguf
    r = gguf.GGUFReader(path)
    for key, f in base.fields.items():
        if key.startswith("GGUF.") or key == "general.file_type":
            continue
        assert key in r.fields, f"{path}: metadata {key} missing"
        assert r.fields[key].contents() == f.contents(), f"{path}: metadata {key} differs"
    assert [t.name for t in r.tensors] == [t.name for t in base.tensors], path
    types = {}
    names = {t.name for t in r.tensors}
    # The output projection (token_embd when tied) stays Q8_0 in a 4-bit file, as llama.cpp's
    # quantizer keeps it at a higher precision too.
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    for t, b in zip(r.tensors, base.tensors):
        assert [int(x) for x in t.shape] == [int(x) for x in b.shape], t.name
        want = "F32" if len(t.shape) == 1 else dtype.upper()
        if t.name == head and dtype.startswith("q4"):
            want = "Q8_0"
        assert t.tensor_type.name == want, (t.name, t.tensor_type.name, want)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return {"tensors": len(r.tensors), "types": types, "kv": len(r.fields)}


def agreement(bora, ref):
    """Tokens equal before the first difference, summed over prompts, and the total."""
    same = 0
    for b, r in zip(bora, ref):
        for x, y in zip(b, r):
            if x != y:
                break
            same += 1
    return same, sum(len(r) for r in ref)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json")
    args = ap.parse_args()
    import gguf
    d = Path(args.dir)
    spec = json.loads((d / "spec.json").read_text())
    bora = json.loads((d / "bora.json").read_text())
    base = gguf.GGUFReader(args.base)
    summary = {"gguf_py": {}}
    for t in ADAPTERS:
        summary["gguf_py"][f"adapter-{t}"] = check_adapter(d / f"adapter-{t}.gguf", base, t)
    for t in MERGED:
        summary["gguf_py"][f"merged-{t}"] = check_merged(d / f"merged-{t}.gguf", base, t)
    print("gguf-py:", json.dumps(summary["gguf_py"]))

    prompts, n = spec["prompts"], spec["n_gen"]
    runs = {"base": (args.base, None)}
    runs.update({f"lora-{t}": (args.base, d / f"adapter-{t}.gguf") for t in ADAPTERS})
    runs.update({f"merged-{t}": (d / f"merged-{t}.gguf", None) for t in MERGED})
    results = {}
    for name, (model, lora) in runs.items():
        results[name] = llama_cpp_greedy(model, lora, prompts, n)
        # The adapter runs against bora's base + adapter in memory; each merged file against
        # bora running that same file.
        key = name if name.startswith("merged") else "lora" if name.startswith("lora") else name
        want = [b[key] for b in bora]
        same, total = agreement(want, [r["tokens"] for r in results[name]])
        print(f"llama.cpp {name}: {same}/{total} greedy tokens agree with bora's (up to the "
              f"first difference per prompt)")
    changed = sum(a["tokens"] != b["tokens"] for a, b in zip(results["base"], results["lora-f32"]))
    print(f"the adapter changes llama.cpp's output on {changed}/{len(prompts)} prompts")
    if args.json:
        summary["llama_cpp"] = results
        Path(args.json).write_text(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
