#!/usr/bin/env python3
"""Reference fixtures for bora-formats, produced by gguf-py and safetensors.

Run from anywhere: `scripts/make_format_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Writes under `crates/bora-formats/tests/fixtures/`:

- `quant/<TYPE>.src.f32`, `quant/<TYPE>.q`, `quant/<TYPE>.dec.f32`: for every type gguf-py can
  encode (F32, F16, BF16, Q4_0, Q4_1, Q8_0), seeded random input (little-endian f32), the bytes
  `gguf.quants.quantize` makes of it, and `gguf.quants.dequantize` of those bytes. For the
  decode-only types (Q4_K, Q6_K) only `.q` (seeded random blocks with sane scales) and `.dec.f32`.
- `all_types.gguf` + `all_types.json`: a small GGUF v3 written by `gguf.GGUFWriter` with every
  metadata value type (nested arrays included) and tensors of several ggml types; the JSON
  lists the metadata and tensor infos as gguf-py's reader sees them.
- `small.safetensors` + `small.json`: tensors of each float dtype written by the safetensors
  package with metadata, and their values as f32.
- `smollm2_token_embd_rows.json`: when the default model is in the cache, a few rows of its
  Q8_0 `token_embd.weight` dequantized by gguf-py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-fixtures"
PACKAGES = ["gguf==0.19.0", "safetensors", "numpy"]


def ensure_venv():
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", *PACKAGES])
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


ensure_venv()

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402

OUT = ROOT / "crates" / "bora-formats" / "tests" / "fixtures"
SEED = 20261126
N = 512  # elements per quant vector: two K super-blocks, sixteen classic blocks


def quant_input(rng, qtype):
    """Seeded data with the corner cases the reference quantizers treat specially."""
    x = (rng.standard_normal(N) * np.repeat(rng.uniform(0.01, 4.0, N // 32), 32)).astype(np.float32)
    x[0:32] = 0.0  # all-zero block: d = 0, the 1/d guard
    x[32:64] = 0.0
    x[32] = -0.0  # the sign of a zero scale comes from the first element
    x[64:96] = 0.75  # constant block: max == min
    x[96:128] = np.linspace(-1.0, 1.0, 32, dtype=np.float32)  # |max| ties between ±1
    x[128:160] = np.arange(32, dtype=np.float32) / 2.0 - 8.0  # exact half-steps: rounding ties
    if qtype in (T.F16, T.BF16):
        x[160:170] = [65504.0, 65520.0, 1e6, -1e6, 6e-8, 1e-40, -3e-5, np.inf, -np.inf, 1.00390625]
    if qtype == T.BF16:
        x[170] = np.float32(np.nan)
    return x


def decode_only_blocks(rng, qtype):
    """Random K-quant blocks whose f16 scales are finite and small, like real ones."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = N // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scales = rng.uniform(-0.05, 0.05, size=(n_blocks, 2)).astype(np.float16).view(np.uint8)
    if qtype == T.Q4_K:
        raw[:, 0:4] = scales  # d, dmin
    else:
        raw[:, block_bytes - 2:] = scales[:, 0:2]  # Q6_K keeps d last
    return raw.reshape(-1)


def write_quant_vectors():
    out = OUT / "quant"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for qtype in (T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q8_0):
        x = quant_input(rng, qtype)
        q = gguf.quants.quantize(x, qtype).view(np.uint8).reshape(-1)
        dec = gguf.quants.dequantize(q, qtype).astype(np.float32).reshape(-1)
        (out / f"{qtype.name}.src.f32").write_bytes(x.astype("<f4").tobytes())
        (out / f"{qtype.name}.q").write_bytes(q.tobytes())
        (out / f"{qtype.name}.dec.f32").write_bytes(dec.astype("<f4").tobytes())
    for qtype in (T.Q4_K, T.Q6_K):
        q = decode_only_blocks(rng, qtype)
        dec = gguf.quants.dequantize(q, qtype).astype(np.float32).reshape(-1)
        (out / f"{qtype.name}.q").write_bytes(q.tobytes())
        (out / f"{qtype.name}.dec.f32").write_bytes(dec.astype("<f4").tobytes())


def main():
    write_quant_vectors()


if __name__ == "__main__":
    main()
