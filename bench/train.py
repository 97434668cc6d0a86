#!/usr/bin/env python3
"""LoRA training step speed and peak memory: bora against PyTorch (PEFT, and a minimal
hand-written LoRA, eager and optionally torch.compile), on the SmolLM2-135M shape.

Every peer trains the same randomly initialised fp32 SmolLM2-135M-shaped model (30 layers,
hidden 576, 9 heads / 3 kv heads, SwiGLU 1536, vocab 49152, tied embeddings), written once as
an HF directory, with LoRA r16 α32 on all seven projections, a batch of 4 × 256 tokens (the
first 32 of each row masked out of the loss) and the same number of threads. Each peer runs in
its own child process, one after the other; the child reports seconds and CPU seconds (all
threads, spin-waits of idle workers included) per step after one warm-up step, and its peak
RSS is read from wait4(). The PyTorch steps include AdamW's update; bora's
(`examples/train_step.rs`) time forward + backward only, the update being under 1% of a step.
bora also trains QLoRA on the default Q4_1 GGUF.

Run from the repo root after `cargo build --release -p bora-model --example train_step`:

    .venv-fixtures/bin/python bench/train.py [--steps 5] [--threads 2] [--compile] [--cpu avx2]

`--cpu` forces bora's kernel path (BORA_CPU) and PyTorch's (ATEN_CPU_CAPABILITY and oneDNN's
ONEDNN_MAX_CPU_ISA) to the same instruction set; each child reports the path it ran.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cpu_path

ROOT = Path(__file__).resolve().parent.parent
BORA = ROOT / "target" / "release" / "examples" / "train_step"
GGUF = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora")) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
             rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ, RANK, ALPHA, MASKED = 4, 256, 16, 32.0, 32


def make_model(path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    model.save_pretrained(path)


def batch(vocab):
    import torch
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, vocab, (BATCH, SEQ + 1), generator=g)
    targets = tokens[:, 1:].clone()
    targets[:, :MASKED] = -100
    return tokens[:, :SEQ].contiguous(), targets


def timed(step, steps):
    """Seconds and CPU seconds (all threads) per step after one warm-up step: on a shared
    machine the CPU time hardly moves with the load, the wall time does."""
    step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def peft_child(path, steps, compile_):
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                            target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    inputs, targets = batch(SHAPE["vocab_size"])
    fwd = torch.compile(model) if compile_ else model

    def step():
        opt.zero_grad()
        logits = fwd(input_ids=inputs).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
    return timed(step, steps)


def minimal_child(path, steps, compile_):
    """A hand-written Llama forward with LoRA in plain PyTorch: frozen tensors, no modules."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    w = load_file(str(Path(path) / "model.safetensors"))
    c = SHAPE
    hd, h, kvh = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(SEQ).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    scale = ALPHA / RANK
    lora = {}
    for l in range(c["num_hidden_layers"]):
        for t in TARGETS:
            wt = w[f"model.layers.{l}.{'mlp' if t in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{t}.weight"]
            a = torch.empty(RANK, wt.shape[1]).uniform_(-1, 1).div_(wt.shape[1] ** 0.5).requires_grad_()
            b = torch.zeros(wt.shape[0], RANK, requires_grad=True)
            lora[(l, t)] = (wt, a, b)
    opt = torch.optim.AdamW([p for v in lora.values() for p in v[1:]], lr=1e-4)

    def lin(x, l, t):
        wt, a, b = lora[(l, t)]
        return x @ wt.T + scale * ((x @ a.T) @ b.T)

    def norm(x, g):
        return g * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c["rms_norm_eps"]))

    def rope(x):
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def loss_fn(inputs, targets):
        x = w["model.embed_tokens.weight"][inputs]
        B, T, _ = x.shape
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            n = norm(x, w[p + "input_layernorm.weight"])
            q = rope(lin(n, l, "q_proj").view(B, T, h, hd).transpose(1, 2))
            k = rope(lin(n, l, "k_proj").view(B, T, kvh, hd).transpose(1, 2))
            v = lin(n, l, "v_proj").view(B, T, kvh, hd).transpose(1, 2)
            k, v = k.repeat_interleave(h // kvh, 1), v.repeat_interleave(h // kvh, 1)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + lin(att.transpose(1, 2).reshape(B, T, h * hd), l, "o_proj")
            n = norm(x, w[p + "post_attention_layernorm.weight"])
            x = x + lin(F.silu(lin(n, l, "gate_proj")) * lin(n, l, "up_proj"), l, "down_proj")
        x = norm(x, w["model.norm.weight"])
        logits = x @ w["model.embed_tokens.weight"].T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    fn = torch.compile(loss_fn) if compile_ else loss_fn
    inputs, targets = batch(c["vocab_size"])

    def step():
        opt.zero_grad()
        fn(inputs, targets).backward()
        opt.step()
    return timed(step, steps)


def run_child(argv, threads, extra_env):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), RAYON_NUM_THREADS=str(threads), **extra_env)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{argv[:4]} failed ({status})")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["wall_s"] = time.perf_counter() - t0
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--compile", action="store_true", help="also time torch.compile peers")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--make-model", help=argparse.SUPPRESS)
    cpu_path.add_argument(ap)
    args = ap.parse_args()
    if args.make_model:
        make_model(args.make_model)
        return
    if args.child:
        import torch
        torch.set_num_threads(args.threads)
        kind, path, compile_ = args.child
        fn = peft_child if kind == "peft" else minimal_child
        s, cpu_s = fn(path, args.steps, compile_ == "1")
        print(json.dumps({"s_per_step": s, "cpu_s_per_step": cpu_s,
                          "cpu": torch.backends.cpu.get_cpu_capability()}))
        return
    tokens = BATCH * SEQ
    print(f"SmolLM2-135M shape, {BATCH}x{SEQ} tokens, LoRA r{RANK} a{ALPHA:g} on 7 projections, "
          f"{args.threads} threads, load average at start {os.getloadavg()[0]:.1f}")
    print(f"{'peer':32} {'s/step':>8} {'tokens/s':>9} {'CPU s/step':>11} {'peak RSS MiB':>13}"
          f" {'time / bora fp32':>17} {'CPU / bora fp32':>16} {'ISA':>8}", flush=True)
    base = None

    def report(name, r):
        nonlocal base
        s, cpu_s = r["s_per_step"], r["cpu_s_per_step"]
        base = base or (s, cpu_s)
        print(f"{name:32} {s:8.3f} {tokens / s:9.1f} {cpu_s:11.2f} {r['peak_rss_mib']:13.0f}"
              f" {s / base[0]:16.2f}x {cpu_s / base[1]:15.2f}x {r.get('cpu', '?'):>8}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        # In a child: a forked peer's peak RSS starts from its parent's, so the parent must
        # never hold a model.
        subprocess.check_call([sys.executable, __file__, "--make-model", tmp])
        common = ["--batch", str(BATCH), "--seq", str(SEQ), "--rank", str(RANK),
                  "--alpha", str(ALPHA), "--steps", str(args.steps)]
        bora = [str(BORA), tmp, *common]
        benv = cpu_path.bora_env(args.cpu)
        report("bora fp32", run_child(bora, args.threads, benv))
        report("bora fp32 --recompute", run_child(bora + ["--recompute"], args.threads, benv))
        if GGUF.exists():
            report("bora QLoRA Q4_1 GGUF", run_child([str(BORA), str(GGUF), *common], args.threads, benv))
        me = [sys.executable, __file__, "--steps", str(args.steps), "--threads", str(args.threads), "--child"]
        peers = [("PyTorch+PEFT eager", "peft", "0"), ("PyTorch minimal LoRA eager", "minimal", "0")]
        if args.compile:
            peers += [("PyTorch+PEFT torch.compile", "peft", "1"),
                      ("PyTorch minimal torch.compile", "minimal", "1")]
        for name, kind, comp in peers:
            report(name, run_child(me + [kind, tmp, comp], args.threads, cpu_path.torch_env(args.cpu)))
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
