#!/usr/bin/env python3
"""NF4 reference fixtures, produced by bitsandbytes' own CPU implementation.

Run from anywhere: `scripts/make_nf4_fixtures.py` (re-executes itself inside `.venv-fixtures`).
Writes `crates/bora-formats/tests/fixtures/nf4/nf4.safetensors` with, for each case NAME:

- `NAME.input` (f32): the tensor quantized;
- `NAME.packed` (u8), `NAME.absmax_q` (u8), `NAME.absmax_scale` (f32), `NAME.offset` (f32[1]):
  `bitsandbytes.functional.quantize_4bit(input, blocksize=64, compress_statistics=True,
  quant_type="nf4")`'s bytes, `quant_state.absmax`, `quant_state.state2.absmax` and
  `quant_state.offset`;
- `NAME.dequant` (f32): `bitsandbytes.functional.dequantize_4bit(packed, quant_state)`;

and `nf4_code` (f32[16]) and `dynamic_code` (f32[256]): the code tables bitsandbytes used
(`quant_state.code`, `quant_state.state2.code`).

Cases: `smollm2_q` is real trained weights (32 rows of the default model's layer-0 query
projection, dequantized from its Q4_1 GGUF; needs `scripts/fetch-default-model.sh`), and
`normal` is seeded normal weights with outliers and an all-zero block, with more than 256
blocks so that the absolute maxima take two blocks of the second quantization.
"""
import os
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402
from gguf import GGUFReader  # noqa: E402
from gguf.quants import dequantize  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

OUT = ROOT / "crates" / "bora-formats" / "tests" / "fixtures" / "nf4"
MODEL = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora")) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_rows():
    reader = GGUFReader(MODEL)
    t = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    w = dequantize(t.data, t.tensor_type).reshape(-1, 576)
    return w[:32].astype(np.float32)


def normal_weights():
    rng = np.random.default_rng(20261207)
    w = (rng.standard_normal((300, 64)) * 0.02).astype(np.float32)
    w[5, 7] = 0.9  # an outlier block
    w[17] = 0.0  # an all-zero block
    w[40, :] = -w[40, :].max()  # the maximum is a negative value
    return w


def main():
    tensors = {}
    codes = None
    for name, w in [("smollm2_q", smollm2_rows()), ("normal", normal_weights())]:
        x = torch.from_numpy(w.copy())
        packed, state = F.quantize_4bit(x, blocksize=64, compress_statistics=True, quant_type="nf4")
        dq = F.dequantize_4bit(packed, state)
        tensors[f"{name}.input"] = w.reshape(-1)
        tensors[f"{name}.packed"] = packed.numpy().reshape(-1).astype(np.uint8)
        tensors[f"{name}.absmax_q"] = state.absmax.numpy().astype(np.uint8)
        tensors[f"{name}.absmax_scale"] = state.state2.absmax.numpy().astype(np.float32)
        tensors[f"{name}.offset"] = np.array([float(state.offset)], dtype=np.float32)
        tensors[f"{name}.dequant"] = dq.numpy().reshape(-1).astype(np.float32)
        codes = (state.code.numpy().astype(np.float32), state.state2.code.numpy().astype(np.float32))
    tensors["nf4_code"], tensors["dynamic_code"] = codes
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT / "nf4.safetensors"))
    print("dynamic code bits:", ", ".join(f"0x{v:08x}" for v in codes[1].view(np.uint32)))


if __name__ == "__main__":
    main()
