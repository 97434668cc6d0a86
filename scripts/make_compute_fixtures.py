#!/usr/bin/env python3
"""Reference RoPE tables for bora-compute, produced by transformers' own rope initializers.

Run from anywhere: `scripts/make_compute_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Writes `crates/bora-compute/tests/fixtures/rope_hf.txt`:
one line per (case, position, frequency index) with the cos and sin transformers' rotary
embedding module returns (attention factor included). The case parameters are repeated in the file header
so the Rust test builds the same tables.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-fixtures"
PACKAGES = ["torch", "transformers==5.24.0"]


def ensure_venv():
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", *PACKAGES])
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


ensure_venv()

import torch  # noqa: E402
from transformers.models.llama.configuration_llama import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

OUT = ROOT / "crates" / "bora-compute" / "tests" / "fixtures" / "rope_hf.txt"
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


def main():
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
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, OUT)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(lines)} lines)")


if __name__ == "__main__":
    main()
