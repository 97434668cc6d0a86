#!/usr/bin/env python3
"""Serving load: `bora serve` against llama.cpp's server (llama-cpp-python) on the same GGUF.

Each server runs alone (one after the other) on loopback with the same thread count; 1, 4
and 16 clients each send requests back to back to `/v1/completions` (greedy, a fixed
`max_tokens`, a different prompt per client). Reported per server and client count:
aggregate generated tokens/s (summed `usage.completion_tokens` over wall time) and p50/p99
end-to-end request latency, and the server process's CPU time per generated token (Linux;
all its threads, so the HTTP side is included). Run from the repo root after `cargo build --release -p bora`:

    .venv-bench/bin/python bench/serve.py [--model PATH] [--threads 2] [--max-tokens 64]
        [--cpu avx512|avx2|portable --llama-python .venv-bench-avx2/bin/python]
        [--requests 2] [--clients 1,4,16] [--only bora|llama] [--rounds N]
        [--bora-bin PATH] [--baseline-bin PATH]

On a machine other processes share, compare A/B rather than absolute figures: `--baseline-bin`
names a second bora binary (say, one built from an earlier commit in a `git worktree` with its
own `CARGO_TARGET_DIR`), which runs alternately with `--bora-bin` (default
`target/release/bora`), `--rounds` times, the order flipping each round so a change in load
hits both; the summary gives each server's median over the rounds, and every row carries the
1-minute load average (`load1`) at its end.

llama-cpp-python's server runs one request at a time (it has no batching), so its aggregate
rate is its single-stream rate plus whatever HTTP overlap gains. `p99` is nearest-rank over the
run's requests (few at low client counts). No test asserts these numbers.

`.venv-bench` needs `llama-cpp-python` with its server extras:
`.venv-bench/bin/pip install uvicorn fastapi sse-starlette pydantic-settings starlette-context`.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cpu_path

ROOT = Path(__file__).resolve().parent.parent
TOPICS = [
    "the sea", "a mountain", "a city at night", "a robot", "the moon", "a forest", "a river",
    "a library", "a train", "winter", "a garden", "a storm", "a lighthouse", "a desert",
    "a violin", "the first day of school",
]


def default_model():
    home = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora"))
    return home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer in {seconds} s")


def complete(base, model, prompt, max_tokens):
    body = json.dumps(
        {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    ).encode()
    req = urllib.request.Request(
        base + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return time.perf_counter() - t0, out["usage"]["completion_tokens"]


def load(base, model, clients, requests, max_tokens):
    """`clients` threads, each sending `requests` requests back to back."""
    latencies, tokens, lock = [], [0], threading.Lock()

    def client(i):
        for r in range(requests):
            prompt = f"Write a long story about {TOPICS[(i + r) % len(TOPICS)]}. Once upon a time,"
            dt, n = complete(base, model, prompt, max_tokens)
            with lock:
                latencies.append(dt)
                tokens[0] += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    return {
        "clients": clients,
        "requests": len(latencies),
        "tokens": tokens[0],
        "wall_s": round(wall, 2),
        "tok_per_s": round(tokens[0] / wall, 1),
        "p50_s": round(pct(50), 2),
        "p99_s": round(pct(99), 2),
    }


def start_bora(binary, model, port, threads, max_batch, cpu):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), **cpu_path.bora_env(cpu))
    cmd = [
        str(binary), "serve", "--model", str(model), "--name", "m", "--port", str(port),
        "--context", "2048", "--max-batch", str(max_batch), "--max-queue", "256",
    ]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)


def start_llama(python, model, port, threads):
    cmd = [
        python, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "m",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(pid):
    """User + system CPU time of process `pid` and its threads so far (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def run(name, start, args):
    port = free_port()
    proc = start(port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/v1/models", proc)
        # Warm-up at full length, generous to both: lazy weight repacking, allocator growth.
        complete(base, "m", "Write a long story about the sea.", args.max_tokens)
        rows = []
        for c in args.clients:
            cpu0 = cpu_seconds(proc.pid)
            row = load(base, "m", c, args.requests, args.max_tokens)
            cpu1 = cpu_seconds(proc.pid)
            if cpu0 is not None and cpu1 is not None:
                # The server's own CPU time per generated token: what a busy machine's
                # preemption does not inflate (its threads only count while they run).
                row["cpu_ms_per_tok"] = round(1e3 * (cpu1 - cpu0) / max(row["tokens"], 1), 2)
            row["server"] = name
            row["load1"] = round(os.getloadavg()[0], 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(default_model()))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="per client")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--only", choices=["bora", "llama"])
    ap.add_argument("--bora-bin", default=str(ROOT / "target" / "release" / "bora"))
    ap.add_argument("--baseline-bin", help="a second bora binary, run alternately with --bora-bin")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--llama-python", default=sys.executable,
                    help="a Python whose llama_cpp (with server extras) is built for the instruction set measured")
    cpu_path.add_argument(ap)
    args = ap.parse_args()
    print(f"bora kernel path: {cpu_path.bora_path(args.bora_bin, args.model, args.cpu)}")
    if args.only != "bora":
        print(f"llama.cpp build: {cpu_path.llama_features(args.llama_python)}")
    args.clients = [int(c) for c in args.clients.split(",")]
    servers = []
    if args.only != "llama":
        servers.append(("bora", lambda p: start_bora(args.bora_bin, args.model, p, args.threads, args.max_batch, args.cpu)))
        if args.baseline_bin:
            servers.append(("baseline", lambda p: start_bora(args.baseline_bin, args.model, p, args.threads, args.max_batch, args.cpu)))
    if args.only != "bora":
        servers.append(("llama.cpp", lambda p: start_llama(args.llama_python, args.model, p, args.threads)))
    rows = []
    for r in range(args.rounds):
        for name, start in servers if r % 2 == 0 else servers[::-1]:
            rows += run(name, start, args)
    med = {}
    for name, _ in servers:
        for c in args.clients:
            rs = sorted((x for x in rows if x["server"] == name and x["clients"] == c), key=lambda x: x["tok_per_s"])
            med[name, c] = rs[len(rs) // 2]
    print(f"\nmedian of {args.rounds} round(s)")
    print(f"{'server':<10} {'clients':>7} {'tok/s':>8} {'p50 s':>7} {'p99 s':>7} {'load1':>6} {'cpu ms/tok':>10}")
    for (name, c), x in med.items():
        cpu = x.get("cpu_ms_per_tok", "-")
        print(f"{name:<10} {c:>7} {x['tok_per_s']:>8} {x['p50_s']:>7} {x['p99_s']:>7} {x['load1']:>6} {cpu:>10}")
    rate = {k: x["tok_per_s"] for k, x in med.items()}
    top = max(args.clients)
    for name, _ in servers:
        if name != "llama.cpp" and 1 in args.clients and top != 1:
            print(f"{name} {top} clients / 1 client: {rate[name, top] / rate[name, 1]:.2f}x")
    for other in ("baseline", "llama.cpp"):
        if any(n == other for n, _ in servers) and any(n == "bora" for n, _ in servers):
            for c in args.clients:
                print(f"{c} clients: bora / {other} = {rate['bora', c] / rate[other, c]:.2f}x")


if __name__ == "__main__":
    main()
