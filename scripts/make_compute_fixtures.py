#!/usr/bin/env python3
"""Reference fixtures for bora-compute, produced by transformers and PyTorch autograd.

Run from anywhere: `scripts/make_compute_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Writes under `crates/bora-compute/tests/fixtures/`:

- `rope_hf.txt`: one line per (case, position, frequency index) with the cos and sin
  transformers' rotary embedding module returns (attention factor included).
- `kernels_torch.txt`: seeded random inputs and the outputs and input gradients PyTorch
  autograd gives for transformers' RMSNorm, rotate-half RoPE, eager attention (GQA, sliding
  window and packed-sequence masks from `transformers.masking_utils`), SwiGLU, softmax and
  summed cross-entropy with ignored targets; one line per tensor, `name v0 v1 …`. The case parameters are repeated in the file header
so the Rust test builds the same tables.
"""
import os

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import torch  # noqa: E402
from transformers.models.llama.configuration_llama import LlamaConfig  # noqa: E402
from transformers.masking_utils import (  # noqa: E402
    and_masks, causal_mask_function, packed_sequence_mask_function,
    sliding_window_causal_mask_function)
from transformers.models.llama.modeling_llama import (  # noqa: E402
    LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb, repeat_kv)

FIXTURES = ROOT / "crates" / "bora-compute" / "tests" / "fixtures"
OUT = FIXTURES / "rope_hf.txt"
POSITIONS = [0, 1, 7, 100, 4097, 39999]
MAX_POSITIONS = 40000

# name: (head_dim, rope_theta, rope_parameters). Ministral-3-like YaRN without and with the
# mscale pair (the attention factor differs from 1 only without it), Llama 3.1, linear, none.
CASES = {
    "yarn": (16, 10.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                        "beta_fast": 32.0, "beta_slow": 1.0}),
    "yarn_mscale": (128, 1e6, {"rope_type": "yarn", "factor": 16.0,
                               "original_max_position_embeddings": 16384, "beta_fast": 32.0,
                               "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}),
    "llama3": (64, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "linear": (64, 10000.0, {"rope_type": "linear", "factor": 2.0}),
    "default": (64, 100000.0, {"rope_type": "default"}),
}


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT)} ({len(lines)} lines)")


def rope_tables():
    lines = ["# name head_dim theta params..., then: name position index cos sin"]
    for name, (hd, theta, params) in CASES.items():
        params = dict(params, rope_theta=theta)
        extra = " ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"# case {name} {hd} {theta} {extra}")
        cfg = LlamaConfig(hidden_size=2 * hd, num_attention_heads=2, head_dim=hd,
                          max_position_embeddings=MAX_POSITIONS, rope_parameters=params)
        rotary = LlamaRotaryEmbedding(cfg)
        x = torch.zeros(1, len(POSITIONS), hd, dtype=torch.float32)
        cos, sin = rotary(x, torch.tensor([POSITIONS]))
        for pi, p in enumerate(POSITIONS):
            # rotate-half layout: columns i and i + hd/2 share a frequency
            for i in range(hd // 2):
                lines.append(f"{name} {p} {i} {cos[0, pi, i].item():.9e} {sin[0, pi, i].item():.9e}")
    write(OUT, lines)


class Tensors:
    """Collects named tensors as text lines; inputs are rounded to f32 before use so the
    Rust side starts from exactly the same values."""

    def __init__(self):
        self.lines = []
        self.gen = torch.Generator().manual_seed(1234)

    def put(self, name, t):
        vals = t.detach().reshape(-1).tolist()
        self.lines.append(name + " " + " ".join(f"{v:.9e}" for v in vals))

    def rand(self, name, *shape, scale=1.0, offset=0.0):
        t = (torch.randn(*shape, generator=self.gen) * scale + offset).float().double()
        self.put(name, t)
        return t.requires_grad_(True)


def grads(out, inputs, dout):
    return torch.autograd.grad(out, inputs, dout)


def kernels():
    f = Tensors()
    torch.set_default_dtype(torch.float64)

    # RMSNorm (transformers' module), T=5, d=16.
    x = f.rand("rms.x", 5, 16)
    norm = LlamaRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(f.rand("rms.w", 16, scale=0.5, offset=1.0).detach())
    y = norm(x)
    dy = f.rand("rms.dy", 5, 16).detach()
    dx, dw = grads(y, (x, norm.weight), dy)
    f.put("rms.y", y)
    f.put("rms.dx", dx)
    f.put("rms.dw", dw)

    # Rotate-half RoPE with transformers' tables: 6 tokens, 3 heads of 8, packed positions.
    positions = [0, 1, 2, 0, 1, 5]
    f.put("rope.positions", torch.tensor(positions, dtype=torch.float64))
    cfg = LlamaConfig(hidden_size=24, num_attention_heads=3, head_dim=8, max_position_embeddings=64,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.zeros(1, 6, 8), torch.tensor([positions]))
    qr = f.rand("rope.x", 6, 3, 8)
    q4 = qr.transpose(0, 1)[None]  # [1, heads, T, hd]
    yq, _ = apply_rotary_pos_emb(q4, q4, cos.double(), sin.double())
    yq = yq[0].transpose(0, 1)
    dyq = f.rand("rope.dy", 6, 3, 8).detach()
    (dq,) = grads(yq, (qr,), dyq)
    f.put("rope.y", yq)
    f.put("rope.dx", dq)

    # Eager attention, 4 query heads on 2 kv heads of 8, two packed sequences (5 + 7 tokens),
    # with a sliding window of 4 and without one.
    seq_ids = torch.tensor([[0] * 5 + [1] * 7])
    t, h, kvh, hd = 12, 4, 2, 8
    for name, window in [("attn_win", 4), ("attn_full", None)]:
        base = sliding_window_causal_mask_function(window) if window else causal_mask_function
        mask_fn = and_masks(base, packed_sequence_mask_function(seq_ids))
        idx = [torch.tensor(i) for i in range(t)]
        allowed = torch.tensor([[bool(mask_fn(0, 0, qi, ki)) for ki in idx] for qi in idx])
        additive = torch.zeros(t, t).masked_fill(~allowed, torch.finfo(torch.float64).min)
        q = f.rand(f"{name}.q", t, h, hd)
        k = f.rand(f"{name}.k", t, kvh, hd)
        v = f.rand(f"{name}.v", t, kvh, hd)
        qh, kh, vh = (a.transpose(0, 1)[None] for a in (q, k, v))
        kh, vh = repeat_kv(kh, h // kvh), repeat_kv(vh, h // kvh)
        w = torch.softmax(qh @ kh.transpose(2, 3) * hd ** -0.5 + additive, dim=-1)
        out = (w @ vh)[0].transpose(0, 1)
        dout = f.rand(f"{name}.dout", t, h, hd).detach()
        dq, dk, dv = grads(out, (q, k, v), dout)
        f.put(f"{name}.out", out)
        f.put(f"{name}.dq", dq)
        f.put(f"{name}.dk", dk)
        f.put(f"{name}.dv", dv)

    # SwiGLU as the Mistral/Llama MLP computes it: silu(gate) * up.
    g = f.rand("swiglu.gate", 40, scale=3.0)
    u = f.rand("swiglu.up", 40)
    hmlp = torch.nn.functional.silu(g) * u
    dh = f.rand("swiglu.dh", 40).detach()
    dg, du = grads(hmlp, (g, u), dh)
    f.put("swiglu.h", hmlp)
    f.put("swiglu.dgate", dg)
    f.put("swiglu.dup", du)

    # Softmax over rows of 9.
    xs = f.rand("softmax.x", 3, 9, scale=3.0)
    ys = torch.softmax(xs, dim=-1)
    dys = f.rand("softmax.dy", 3, 9).detach()
    (dxs,) = grads(ys, (xs,), dys)
    f.put("softmax.y", ys)
    f.put("softmax.dx", dxs)

    # Summed cross-entropy over a 24-token vocabulary, targets -100 ignored.
    hid = f.rand("ce.hidden", 7, 16)
    wout = f.rand("ce.w", 24, 16).detach()
    targets = torch.tensor([3, -100, 0, 23, -100, 7, 7])
    f.put("ce.targets", targets.double())
    loss = torch.nn.functional.cross_entropy(hid @ wout.T, targets, ignore_index=-100, reduction="sum")
    (dhid,) = grads(loss, (hid,), torch.tensor(1.0))
    f.put("ce.loss", loss.reshape(1))
    f.put("ce.dh", dhid)

    write(FIXTURES / "kernels_torch.txt", f.lines)


if __name__ == "__main__":
    rope_tables()
    kernels()
