#!/usr/bin/env python3
"""How long a long prompt holds back a running stream on `bora serve`.

Starts the server (as `bench/serve.py` does), opens one streaming `/v1/completions` request
(greedy, 200 tokens), and 0.3 s later sends a prompt of about 1760 tokens. Prints the longest
and the median gap between the stream's events, and how long the long prompt took to answer.
Without chunked prefill the longest gap is the long prompt's whole prefill. Run from the repo
root after `cargo build --release -p bora`:

    python3 bench/serve_stall.py [--bora-bin PATH] [--model PATH] [--threads 2]

No test asserts these numbers.
"""
import argparse
import json
import os
import threading
import time
import urllib.request

from serve import ROOT, default_model, free_port, start_bora, wait_ready

LONG = "The quick brown fox jumps over the lazy dog and keeps running through the forest. " * 110


def post(base, body):
    return urllib.request.Request(
        base + "/v1/completions",
        data=json.dumps({"model": "m", "temperature": 0, **body}).encode(),
        headers={"Content-Type": "application/json"},
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bora-bin", default=str(ROOT / "target" / "release" / "bora"))
    ap.add_argument("--model", default=str(default_model()))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    port = free_port()
    proc = start_bora(args.bora_bin, args.model, port, args.threads, 16)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/v1/models", proc)
        results = {}

        def stream():
            times = []
            req = post(base, {"prompt": "Write a long story about the sea. Once upon a time,",
                              "max_tokens": 200, "stream": True})
            with urllib.request.urlopen(req, timeout=600) as r:
                for line in r:
                    if line.startswith(b"data:") and b"[DONE]" not in line:
                        times.append(time.perf_counter())
            results["gaps"] = sorted(b - a for a, b in zip(times, times[1:]))

        def long_prompt():
            time.sleep(0.3)
            t0 = time.perf_counter()
            with urllib.request.urlopen(post(base, {"prompt": LONG, "max_tokens": 8}), timeout=600) as r:
                out = json.load(r)
            results["long"] = (out["usage"]["prompt_tokens"], time.perf_counter() - t0)

        threads = [threading.Thread(target=stream), threading.Thread(target=long_prompt)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        gaps = results["gaps"]
        tokens, seconds = results["long"]
        print(f"stream: longest gap {gaps[-1] * 1e3:.0f} ms, median {gaps[len(gaps) // 2] * 1e3:.1f} ms")
        print(f"long prompt: {tokens} tokens, answered in {seconds:.2f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
