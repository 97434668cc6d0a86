#!/usr/bin/env python3
"""Decode and prefill speed and peak memory: bora against llama.cpp on the same GGUF.

Each engine runs in its own child process, one after the other, with the same number of
threads, the same prompt ids (tokenized by llama.cpp, so both process exactly the same tokens)
and greedy decoding; each child reports its own timings and this script reads the child's peak
RSS from wait4(). Run from the repo root after `cargo build --release`:

    .venv-bench/bin/python bench/decode.py [--model PATH] [--threads 2] [--prompt-tokens 128] [--gen 128]
        [--cpu avx512|avx2|portable --llama-python .venv-bench-avx2/bin/python]

`.venv-bench` is a venv with `llama-cpp-python` (pip builds llama.cpp from source).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import cpu_path

LLAMA_CHILD = r"""
import json, sys, time
from llama_cpp import Llama
model, threads, prompt_tokens, gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=prompt_tokens + gen + 8,
            n_batch=512, verbose=False)
text = open(sys.argv[5]).read()
ids = llm.tokenize(text.encode(), add_bos=False)[:prompt_tokens]
llm.eval(ids)  # warm-up, generous to the peer: lazy weight repacking happens on the first batch
llm.reset()
t0 = time.perf_counter()
llm.eval(ids)
t1 = time.perf_counter()
out = []
for i in range(gen):
    tok = llm.sample(temp=0.0)
    out.append(tok)
    if i + 1 < gen:
        llm.eval([tok])
t2 = time.perf_counter()
print(json.dumps({"prompt_ids": ids, "prefill_s": t1 - t0, "decode_s": t2 - t1, "generated": out}))
"""

TORCH_CHILD = r"""
import json, os, sys, time
import torch
from transformers import AutoModelForCausalLM
model, threads, ids, gen = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
lm = AutoModelForCausalLM.from_pretrained(os.path.dirname(model), gguf_file=os.path.basename(model),
                                          torch_dtype=torch.float32).eval()
x = torch.tensor([ids])
with torch.inference_mode():
    lm(x)  # warm-up, as for llama.cpp
    t0 = time.perf_counter()
    out = lm(x, use_cache=True)
    t1 = time.perf_counter()
    past, generated = out.past_key_values, []
    tok = int(out.logits[0, -1].argmax())
    for i in range(gen):
        generated.append(tok)
        if i + 1 < gen:
            out = lm(torch.tensor([[tok]]), past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, int(out.logits[0, -1].argmax())
    t2 = time.perf_counter()
print(json.dumps({"prefill_s": t1 - t0, "decode_s": t2 - t1, "generated": generated}))
"""

PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based inks and a wooden screw press into a system that could "
    "produce books faster and more cheaply than ever before. Within decades, printing shops spread "
    "across Europe, and the number of books in circulation grew from thousands to millions. "
) * 8


def run_with_rss(cmd):
    """Run one engine in a child process; return its output and its own peak RSS in MiB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd[:2])} failed:\n{err.decode()}")
    return out.decode(), err.decode(), usage.ru_maxrss / 1024.0, time.perf_counter() - t0


def main():
    home = os.environ.get("BORA_HOME", os.path.expanduser("~/.cache/bora"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(home, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--bora", default="target/release/bora")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine, alternating; best is reported")
    ap.add_argument("--torch-python", default=".venv-fixtures/bin/python",
                    help="a Python with torch and transformers, for the PyTorch fp32 row (once, not repeated)")
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python whose llama_cpp is built for the instruction set measured")
    cpu_path.add_argument(ap)
    args = ap.parse_args()
    print(f"bora kernel path: {cpu_path.bora_path(args.bora, args.model, args.cpu)}")
    print(f"llama.cpp build: {cpu_path.llama_features(args.llama_python)}")
    if args.cpu:
        print(f"PyTorch: {cpu_path.torch_env(args.cpu)}")
    bora_env = [f"{k}={v}" for k, v in cpu_path.bora_env(args.cpu).items()]
    torch_env = [f"{k}={v}" for k, v in cpu_path.torch_env(args.cpu).items()]

    prompt_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".decode_prompt.txt")
    with open(prompt_file, "w") as f:
        f.write(PROMPT)

    llama_runs, bora_runs = [], []
    for _ in range(args.repeat):
        out, _, rss, _ = run_with_rss([args.llama_python, "-c", LLAMA_CHILD, args.model, str(args.threads),
                                       str(args.prompt_tokens), str(args.gen), prompt_file])
        llama = json.loads(out.strip().splitlines()[-1])
        ids = llama["prompt_ids"]
        llama_runs.append((len(ids) / llama["prefill_s"], (args.gen - 1) / llama["decode_s"], rss))

        cmd = [args.bora, "generate", "--model", args.model, "--prompt-ids", ",".join(map(str, ids)),
               "--max-tokens", str(args.gen), "--temperature", "0", "--ignore-eos", "--stats-json"]
        _, err, rss, _ = run_with_rss(["env", f"RAYON_NUM_THREADS={args.threads}", *bora_env] + cmd)
        bora = json.loads(err.strip().splitlines()[-1])
        bora_runs.append((len(ids) / bora["prefill_s"], bora["decode_tokens"] / bora["decode_s"], rss))

    torch_row = None
    if args.torch_python and os.path.exists(args.torch_python):
        out, _, rss, _ = run_with_rss(["env", *torch_env, args.torch_python, "-c", TORCH_CHILD, args.model, str(args.threads),
                                       json.dumps(ids), str(args.gen)])
        t = json.loads(out.strip().splitlines()[-1])
        torch_row = (len(ids) / t["prefill_s"], (args.gen - 1) / t["decode_s"], rss)

    n_prompt, n_gen = len(ids), args.gen
    best = lambda runs: (max(r[0] for r in runs), max(r[1] for r in runs), min(r[2] for r in runs))
    rows = {"llama.cpp": best(llama_runs), "bora": best(bora_runs)}
    if torch_row:
        rows["PyTorch fp32 (transformers, 1 run)"] = torch_row
    print(f"model {os.path.basename(args.model)}, {args.threads} threads, {n_prompt} prompt tokens, {n_gen} generated (decode rate over {n_gen - 1} single-token steps), best of {args.repeat} alternating runs")
    print(f"{'engine':<36} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MiB':>13}")
    for name, (p, d, r) in rows.items():
        print(f"{name:<36} {p:>14.1f} {d:>13.1f} {r:>13.1f}")
    lp, ld, lr = rows["llama.cpp"]
    bp, bd, br = rows["bora"]
    print(f"ratio bora/llama.cpp: prefill {bp / lp:.2f}x, decode {bd / ld:.2f}x, peak RSS {br / lr:.2f}x")
    if torch_row:
        tp, td, tr = torch_row
        print(f"ratio bora/PyTorch fp32: prefill {bp / tp:.2f}x, decode {bd / td:.2f}x, peak RSS {br / tr:.2f}x")
    same = bora.get("generated") == llama["generated"]
    print(f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
