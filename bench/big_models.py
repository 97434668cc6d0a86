#!/usr/bin/env python3
"""Idle timings of big models: how long a user waits before the first token, from a cold page
cache (the model's files just evicted) and from a warm one (the same run again), with the peak
RSS of each run. bora loads each `--model` (a bf16 directory from `scripts/make_big_models.py`
or a GGUF from `scripts/make_big_gguf.py`); with `--llama-python`, llama.cpp loads each GGUF
too, with the same prompt ids and threads, in the same run. Run from the repo root after
`cargo build --release`:

    python3 bench/big_models.py --model models/m7b --model models/m7b-8l.q4_0.gguf \
        [--llama-python .venv-bench/bin/python] [--threads 2] [--quant q8_0]

Each run generates one token from 32 prompt ids. Time to the first token is the engine
process's wall time from its start to its exit (so it includes starting and tearing down the
process, which both engines pay); load time is that less the engine's own prefill time (bora's
`--stats-json`, llama.cpp's `eval` of the prompt and first sample timed in its child). bora
reads and converts every weight while loading; llama.cpp maps the file and pages most of it in
during the prompt, so compare time to the first token rather than load. Evicting uses
posix_fadvise(DONTNEED) on the model's files only, so other processes' caches stay as they
are; the share of the model in the page cache before each run is printed.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cpu_path

LLAMA_CHILD = r"""
import json, sys, time
from llama_cpp import Llama
model, threads, ids = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=len(ids) + 16,
            n_batch=512, verbose=False)
t0 = time.perf_counter()
llm.eval(ids)
first = llm.sample(temp=0.0)
print(json.dumps({"prefill_s": time.perf_counter() - t0, "first": first}))
"""

# Prompt ids: BOS and 31 ordinary pieces of the Mistral v3 vocabulary (both test models use a
# vocabulary of at least 32768 tokens, so any id below that is valid).
PROMPT_IDS = [1] + list(range(1000, 1031))


def model_files(model):
    path = Path(model)
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


def evict(model):
    """Drops the model's pages from the page cache (dirty pages are written first)."""
    for path in model_files(model):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_share(model):
    """Share of the model's bytes in the page cache now (util-linux `fincore`)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE",
                          *map(str, model_files(model))], capture_output=True, text=True, check=True)
    rows = [list(map(int, line.split())) for line in out.stdout.splitlines() if line.strip()]
    return sum(r[0] for r in rows) / max(sum(r[1] for r in rows), 1)


def run(cmd, env):
    """Runs one engine under `/usr/bin/time`; returns its stdout, stderr lines, wall seconds and
    peak RSS in MiB."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-2000:]}")
    err = proc.stderr.strip().splitlines()
    wall, rss = err[-1].split()
    return proc.stdout, err[:-1], float(wall), int(rss) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--bora", default="target/release/bora")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quant", help="bora's --quant for bf16 directories (default: bora's)")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--llama-python", help="a Python with llama_cpp, to time llama.cpp on each GGUF")
    cpu_path.add_argument(ap)
    args = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), **cpu_path.bora_env(args.cpu))
    print(f"load average: {os.getloadavg()}")
    print(f"{'model':<28} {'engine':<10} {'cache':<6} {'in cache':>8} {'load s':>8} "
          f"{'first token s':>14} {'peak RSS MiB':>13}")
    for model in args.model:
        name = Path(model).name
        engines = [("bora", None)]
        if args.llama_python and model.endswith(".gguf"):
            engines.append(("llama.cpp", args.llama_python))
        for engine, python in engines:
            for cache in ("cold", "warm"):
                if cache == "cold":
                    evict(model)
                share = cached_share(model)
                if engine == "bora":
                    cmd = [args.bora, "generate", "--model", model, "--prompt-ids",
                           ",".join(map(str, PROMPT_IDS)), "--max-tokens", "1", "--temperature", "0",
                           "--ignore-eos", "--context", str(args.context), "--stats-json"]
                    if args.quant and not model.endswith(".gguf"):
                        cmd += ["--quant", args.quant]
                    _, err, wall, rss = run(cmd, env)
                    prefill = json.loads(err[-1])["prefill_s"]
                else:
                    cmd = [python, "-c", LLAMA_CHILD, model, str(args.threads), json.dumps(PROMPT_IDS)]
                    out, _, wall, rss = run(cmd, env)
                    prefill = json.loads(out.strip().splitlines()[-1])["prefill_s"]
                print(f"{name:<28} {engine:<10} {cache:<6} {share:>8.0%} {wall - prefill:>8.2f} {wall:>14.2f} "
                      f"{rss:>13.0f}", flush=True)
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
