#!/usr/bin/env python3
"""What `bora data check` predicts against what `bora train` then does, on several shapes:
the step count (must be equal), the run's wall time (within 1.5x) and peak memory (the child's
peak RSS, VmHWM, from wait4). Prints one row per shape. Run from the repo root after
`cargo build --release`:

    python3 scripts/preflight_accuracy.py [--big models/m7b-2l] [--only demo,chat]

Shapes, on the default model: `demo` (the bundled demo's data and settings; `bora demo` is run
to write the data unless --demo-data names it), `chat` (600 short chats packed into 512-token
rows, batch 4, gradient accumulation 2, a 10% validation split, one epoch), `text` (the same as
plain text, unpacked, batch 2 of 256, max_steps 6), and with --big a bf16 model directory
(scripts/make_big_models.py) trained with QLoRA q4_0.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BORA = "target/release/bora"


def run_rss(cmd):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return out.decode(), err.decode(), usage.ru_maxrss * 1024, time.perf_counter() - t0


def compare(name, data, flags, model, tmp):
    check_cmd = [BORA, "data", "check", data, "--json", "--model", model] + flags
    out, _, _, check_s = run_rss(check_cmd)
    est = json.loads(out)
    run_dir = os.path.join(tmp, "runs", name)
    train_flags = [f.replace("--lora-rank", "--rank") for f in flags]
    train_cmd = [BORA, "train", "--data", data, "--out", run_dir, "--model", model] + train_flags
    _, _, rss, _ = run_rss(train_cmd)
    timing = json.load(open(os.path.join(run_dir, "timing.json")))
    this_run = next(m for m in est["memory"] if m["use"] == est_use(flags))
    row = {
        "shape": name,
        "steps_estimated": est["steps"],
        "steps_trained": timing["steps"],
        "time_estimated_s": round(est["run_seconds"], 1),
        "time_trained_s": round(timing["train_seconds"], 1),
        "time_ratio": round(est["run_seconds"] / timing["train_seconds"], 2),
        "peak_estimated_mib": round(this_run["peak_bytes"] / 2**20),
        "peak_measured_mib": round(rss / 2**20),
        "memory_ratio": round(this_run["peak_bytes"] / rss, 2),
        "check_s": round(check_s, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def est_use(flags):
    if "--qlora" in flags:
        return f"train, QLoRA {flags[flags.index('--qlora') + 1]}"
    return "train, LoRA, base as stored"


def synthetic_chats(path, n):
    """Short arithmetic chats of varied length (a stand-in when the demo's data is not given)."""
    with open(path, "w") as f:
        for i in range(n):
            a, b = i * 7 % 97, i * 13 % 89
            answer = f"{a} plus {b} is {a + b}." + " That is the sum." * (i % 6)
            f.write(json.dumps({"messages": [
                {"role": "system", "content": "You add numbers."},
                {"role": "user", "content": f"What is {a} plus {b}?"},
                {"role": "assistant", "content": answer}]}) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", help="a bf16 model directory for the QLoRA shape")
    ap.add_argument("--only", help="comma-separated shapes")
    ap.add_argument("--bora", default="target/release/bora")
    ap.add_argument("--demo-data", help="the directory `bora demo` wrote its data to (else made here)")
    args = ap.parse_args()
    global BORA
    BORA = args.bora
    only = set(args.only.split(",")) if args.only else None
    model = subprocess.check_output([BORA, "default-model"]).decode().strip()
    tmp = tempfile.mkdtemp(prefix="bora-preflight-")
    try:
        demo_data = args.demo_data
        if not demo_data and (not only or "demo" in only):
            run_rss([BORA, "demo", "--out", os.path.join(tmp, "demo"), "--steps", "30"])
            demo_data = os.path.join(tmp, "demo-data")
        chats = os.path.join(tmp, "chats.jsonl")
        synthetic_chats(chats, 600)
        text = os.path.join(tmp, "text.jsonl")
        with open(chats) as src, open(text, "w") as dst:
            for line in src:
                msgs = json.loads(line)["messages"]
                dst.write(json.dumps({"text": " ".join(m["content"] for m in msgs) * 3}) + "\n")
        shapes = {
            "chat": (chats, ["--batch-size", "4", "--seq-len", "512", "--grad-accum", "2",
                             "--val-fraction", "0.1", "--epochs", "1"]),
            "text": (text, ["--batch-size", "2", "--seq-len", "256", "--max-steps", "6",
                            "--pack", "false"]),
        }
        if demo_data:
            shapes["demo"] = (os.path.join(demo_data, "train.jsonl"),
                              ["--val", os.path.join(demo_data, "val.jsonl"), "--batch-size", "8",
                               "--seq-len", "96", "--pack", "false", "--lora-rank", "8",
                               "--max-steps", "30", "--eval-every", "10"])
        for name, (data, flags) in shapes.items():
            if not only or name in only:
                compare(name, data, flags, model, tmp)
        if args.big and (not only or "big" in only):
            flags = ["--batch-size", "1", "--seq-len", "256", "--max-steps", "3", "--qlora", "q4_0"]
            compare("big-qlora-q4_0", text, flags, args.big, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
