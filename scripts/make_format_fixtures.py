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
  package with metadata, and their values as f32 (the order of the two metadata keys in the
  header follows the library's hash map, so the bytes may differ between runs).
- `sharded/`: a two-shard checkpoint with `model.safetensors.index.json` as transformers writes.
- `names.json`: a tiny transformers Mistral's tensor names with gguf-py's GGUF names for them
  and for their consolidated spellings, peft's adapter keys, and the row order transformers'
  GGUF loader gives q/k weights (llama.cpp's interleaved layout back to HF's rotate-half).
- `smollm2_attn_k_hf_rows.json`: rows of the default model's `blk.0.attn_k.weight` after
  transformers' GGUF loader un-permuted them.
- `arch/<case>/config.json` (saved by transformers) and `arch/<case>/params.json`, with
  `arch/expected.json`: the values transformers resolves when loading each config.json, and
  those vLLM's params.json adapter derives.
- `smollm2_facts.json`: when the default model is in the cache, its metadata and tensor infos
  as gguf-py's reader sees them, and a few rows of its Q8_0 `token_embd.weight` dequantized.
"""
import json
import os
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

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


GGUF_TYPE_NAMES = {
    gguf.GGUFValueType.UINT8: "u8", gguf.GGUFValueType.INT8: "i8",
    gguf.GGUFValueType.UINT16: "u16", gguf.GGUFValueType.INT16: "i16",
    gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.INT32: "i32",
    gguf.GGUFValueType.FLOAT32: "f32", gguf.GGUFValueType.BOOL: "bool",
    gguf.GGUFValueType.STRING: "string", gguf.GGUFValueType.ARRAY: "array",
    gguf.GGUFValueType.UINT64: "u64", gguf.GGUFValueType.INT64: "i64",
    gguf.GGUFValueType.FLOAT64: "f64",
}
V = gguf.GGUFValueType


def typed(vtype, value):
    """The JSON form of a value as the writer was told it: {type, value} or, for arrays,
    {type: "array", elem, items: [typed...]} (gguf-py's reader cannot read nested arrays, so
    the ground truth is what the writer wrote)."""
    if vtype == V.ARRAY:
        elem = gguf.GGUFValueType.get_type(value[0])
        return {"type": "array", "elem": GGUF_TYPE_NAMES[elem], "items": [typed(elem, v) for v in value]}
    if vtype == V.FLOAT32:
        value = float(np.float32(value))
    return {"type": GGUF_TYPE_NAMES[vtype], "value": value}


def typed_array(elem, items):
    return {"type": "array", "elem": GGUF_TYPE_NAMES[elem], "items": [typed(elem, v) for v in items]}


def write_all_types_gguf(rng):
    path = OUT / "all_types.gguf"
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_custom_alignment(64)
    expected = [
        {"key": "general.architecture", **typed(V.STRING, "llama")},
        {"key": "general.alignment", **typed(V.UINT32, 64)},
    ]
    scalars = [
        ("t.u8", V.UINT8, 255), ("t.i8", V.INT8, -128), ("t.u16", V.UINT16, 65535),
        ("t.i16", V.INT16, -32768), ("t.u32", V.UINT32, 4000000000), ("t.i32", V.INT32, -2000000000),
        ("t.f32", V.FLOAT32, 1e-5), ("t.bool.true", V.BOOL, True), ("t.bool.false", V.BOOL, False),
        ("t.string", V.STRING, "héllo, wörld ▁ 🙂\n"), ("t.string.empty", V.STRING, ""),
        ("t.u64", V.UINT64, 2**63 + 5), ("t.i64", V.INT64, -(2**62)), ("t.f64", V.FLOAT64, 3.25),
    ]
    for key, vtype, value in scalars:
        w.add_key_value(key, value, vtype)
        expected.append({"key": key, **typed(vtype, value)})
    arrays = [
        ("t.arr.u8", V.UINT8, [0, 1, 255]), ("t.arr.i8", V.INT8, [-1, 2]),
        ("t.arr.u16", V.UINT16, [7]), ("t.arr.i16", V.INT16, [-7, 7]),
        ("t.arr.u32", V.UINT32, [1, 2, 3]), ("t.arr.i32", V.INT32, [-1, 0, 1]),
        ("t.arr.f32", V.FLOAT32, [0.5, -1.25, 3.0e38]), ("t.arr.bool", V.BOOL, [True, False]),
        ("t.arr.string", V.STRING, ["a", "", "ĠĠ", "<0x0A>"]), ("t.arr.u64", V.UINT64, [2**64 - 1]),
        ("t.arr.i64", V.INT64, [-(2**63)]), ("t.arr.f64", V.FLOAT64, [0.125, -2.0]),
    ]
    for key, elem, items in arrays:
        w.add_key_value(key, items, V.ARRAY, sub_type=elem)
        expected.append({"key": key, **typed_array(elem, items)})
    nested = [
        ("t.nested.i32", [[1, 2], [3, 4, 5], [6]]),
        ("t.nested.string", [["x", "yz"], ["w"]]),
        ("t.nested.deep", [[[1.5], [2.5, 3.5]], [[4.5]]]),
    ]
    for key, items in nested:
        w.add_array(key, items)
        expected.append({"key": key, **typed(V.ARRAY, items)})

    def q(qtype, rows, cols):
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        return gguf.quants.quantize(x, qtype)

    tensors = [
        ("f32.3d", rng.standard_normal((2, 3, 32)).astype(np.float32), None),
        ("f32.1d", rng.standard_normal(7).astype(np.float32), None),
        ("f16", rng.standard_normal((4, 64)).astype(np.float16), None),
        ("bf16", q(T.BF16, 4, 32), T.BF16),
        ("q8_0", q(T.Q8_0, 3, 64), T.Q8_0),
        ("q4_0", q(T.Q4_0, 2, 64), T.Q4_0),
        ("q4_1", q(T.Q4_1, 5, 32), T.Q4_1),
        ("q4_k", decode_only_blocks(rng, T.Q4_K).reshape(1, -1), T.Q4_K),
        ("q6_k", decode_only_blocks(rng, T.Q6_K).reshape(1, -1), T.Q6_K),
    ]
    for name, data, raw_dtype in tensors:
        w.add_tensor(name, data, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = gguf.GGUFReader(str(path))
    tensor_json = []
    for t in r.tensors:
        values = gguf.quants.dequantize(t.data.reshape(-1).view(np.uint8), t.tensor_type) \
            if t.tensor_type not in (T.F32, T.F16) else t.data.astype(np.float32)
        tensor_json.append({
            "name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes), "file_offset": int(t.data_offset),
            "values": [float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1)],
        })
    summary = {
        "version": 3, "alignment": int(r.alignment), "data_offset": int(r.data_offset),
        "file_len": path.stat().st_size, "metadata": expected, "tensors": tensor_json,
    }
    (OUT / "all_types.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n")


def write_safetensors(rng):
    from safetensors import TensorSpec, serialize_file
    from safetensors.numpy import save_file

    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((2, 5)).astype(np.float16)
    c32 = rng.standard_normal((2, 2, 3)).astype(np.float32)
    c = gguf.quants.quantize(c32, T.BF16).reshape(-1)  # round to bf16 as torch does (RNE)
    metadata = {"format": "pt", "note": "bora fixture"}

    def spec(dtype, shape, arr):
        # serialize_file reads through the pointer; the arrays outlive the call.
        return TensorSpec(dtype=dtype, shape=list(shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes)

    serialize_file({
        "a.f32": spec("float32", a.shape, a),
        "model.layers.0.b.f16": spec("float16", b.shape, b),
        "c.bf16": spec("bfloat16", c32.shape, c),
    }, str(OUT / "small.safetensors"), metadata=metadata)
    c_f32 = gguf.quants.dequantize(c, T.BF16).reshape(-1)
    expected = {
        "metadata": metadata,
        "tensors": {
            "a.f32": {"dtype": "F32", "shape": list(a.shape), "values": [float(v) for v in a.reshape(-1)]},
            "model.layers.0.b.f16": {"dtype": "F16", "shape": list(b.shape),
                                     "values": [float(v) for v in b.astype(np.float32).reshape(-1)]},
            "c.bf16": {"dtype": "BF16", "shape": list(c32.shape), "values": [float(v) for v in c_f32]},
        },
    }
    (OUT / "small.json").write_text(json.dumps(expected, indent=1) + "\n")

    # A sharded checkpoint the way transformers saves one.
    shard_dir = OUT / "sharded"
    shard_dir.mkdir(exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {"x.weight": a},
        "model-00002-of-00002.safetensors": {"y.weight": b, "z.weight": a[:1]},
    }
    weight_map = {}
    total = 0
    for fname, tensors in shards.items():
        save_file(tensors, str(shard_dir / fname), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = fname
            total += t.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def default_model_path():
    home = os.environ.get("BORA_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "bora")
    return Path(home) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_smollm2_facts():
    path = default_model_path()
    if not path.exists():
        print(f"skipping SmolLM2 fixtures: {path} is missing (scripts/fetch-default-model.sh)")
        return
    r = gguf.GGUFReader(str(path))
    metadata = []
    for field in r.fields.values():
        if field.name.startswith("GGUF."):
            continue
        entry = {"key": field.name, "type": GGUF_TYPE_NAMES[field.types[0]]}
        if field.types[0] == V.ARRAY:
            contents = field.contents()
            entry["elem"] = GGUF_TYPE_NAMES[field.types[-1]]
            entry["len"] = len(contents)
            entry["first"] = contents[:8]
            entry["last"] = contents[-1]
        else:
            entry["value"] = field.contents()
        metadata.append(entry)
    tensors = [{"name": t.name, "type": t.tensor_type.name, "dims": [int(d) for d in t.shape],
                "n_bytes": int(t.n_bytes), "file_offset": int(t.data_offset)} for t in r.tensors]
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    rows = [0, 1, 2, 100, 49151]
    decoded = gguf.quants.dequantize(emb.data[rows], emb.tensor_type)
    facts = {
        "file_len": path.stat().st_size, "alignment": int(r.alignment), "data_offset": int(r.data_offset),
        "metadata": metadata, "tensors": tensors,
        "token_embd_rows": rows,
        "token_embd_values": [[float(v) for v in row] for row in decoded],
    }
    (OUT / "smollm2_facts.json").write_text(json.dumps(facts, ensure_ascii=False) + "\n")


# Consolidated module paths per HF path, from transformers' Mistral converter
# (convert_mistral_weights_to_hf.py); gguf-py maps both spellings, which the test checks.
HF_TO_CONSOLIDATED = {
    "model.embed_tokens": "tok_embeddings", "model.norm": "norm", "lm_head": "output",
    "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
}


def to_consolidated(hf_name):
    stem = hf_name.removesuffix(".weight")
    if stem.startswith("model.layers."):
        layer, path = stem.removeprefix("model.layers.").split(".", 1)
        return f"layers.{layer}.{HF_TO_CONSOLIDATED[path]}.weight"
    return f"{HF_TO_CONSOLIDATED[stem]}.weight"


def write_names_and_rope(rng):
    """Tensor names of a tiny transformers Mistral, their GGUF names per gguf-py's tensor map,
    PEFT adapter keys from peft, and q/k rows un-permuted by transformers' GGUF loader."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import MistralConfig, MistralForCausalLM
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    torch.manual_seed(SEED)
    cfg = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    model = MistralForCausalLM(cfg)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    names = []
    for hf in model.state_dict().keys():
        cons = to_consolidated(hf)
        names.append({
            "hf": hf, "gguf": tmap.get_name(hf, try_suffixes=(".weight", ".bias")),
            "consolidated": cons, "gguf_from_consolidated": tmap.get_name(cons, try_suffixes=(".weight",)),
        })
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    peft_keys = sorted(get_peft_model_state_dict(peft_model).keys())

    # Reference q/k layout change: transformers' GGUF loader turns llama.cpp's interleaved rows
    # back into HF rows. Inputs are row indices so every row's destination is visible.
    rope = []
    for n_heads, head_dim in [(4, 8), (2, 8), (3, 64), (1, 2)]:
        rows = np.arange(n_heads * head_dim, dtype=np.float32).reshape(-1, 1) * np.ones((1, 3), np.float32)
        proc = LlamaTensorProcessor(config={"num_attention_heads": n_heads, "num_key_value_heads": n_heads})
        out = proc.process(rows, "blk.0.attn_q.weight").weights
        rope.append({"n_heads": n_heads, "head_dim": head_dim, "hf_rows_from": [int(v) for v in out[:, 0]]})
    (OUT / "names.json").write_text(json.dumps({"tensors": names, "peft": peft_keys, "rope": rope}, indent=1) + "\n")

    path = default_model_path()
    if path.exists():
        r = gguf.GGUFReader(str(path))
        k = next(t for t in r.tensors if t.name == "blk.0.attn_k.weight")
        n_head = int(r.fields["llama.attention.head_count"].contents())
        n_kv = int(r.fields["llama.attention.head_count_kv"].contents())
        dense = gguf.quants.dequantize(k.data, k.tensor_type)
        proc = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_kv})
        hf = proc.process(dense, "blk.0.attn_k.weight").weights
        rows = [0, 1, 31, 32, 33, 63, 64, 191]
        (OUT / "smollm2_attn_k_hf_rows.json").write_text(json.dumps({
            "n_kv_heads": n_kv, "rows": rows, "values": [[float(v) for v in hf[i]] for i in rows],
        }) + "\n")


def write_arch_configs():
    """config.json files saved by transformers for each supported family, each with the
    values transformers resolves when loading it (defaults filled in, legacy keys converted),
    and params.json files with the values vLLM's params.json adapter derives."""
    from transformers import (AutoConfig, LlamaConfig, MinistralConfig, Ministral3Config,
                              Mistral3Config, MistralConfig)

    small = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2)
    cases = {
        "mistral_v01": MistralConfig(**small, sliding_window=4096, rope_theta=10000.0),
        "mistral_default_window": MistralConfig(**small),
        "mistral_nemo": MistralConfig(**{**small, "head_dim": 32}, sliding_window=None,
                                      rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
        "llama_llama3": LlamaConfig(**small, tie_word_embeddings=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        "llama_linear": LlamaConfig(**small, rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}),
        "ministral": MinistralConfig(**small, sliding_window=32768,
                                     layer_types=["full_attention", "sliding_attention"] * 2),
        "ministral3": Ministral3Config(**{**small, "head_dim": 32}),
        "ministral3_defaults": Ministral3Config(**small),
        "mistral3": Mistral3Config(text_config={**small, "model_type": "ministral3", "head_dim": 16},
                                   vision_config={"model_type": "pixtral", "hidden_size": 32,
                                                  "intermediate_size": 32, "num_hidden_layers": 1,
                                                  "num_attention_heads": 2}),
    }
    out = OUT / "arch"
    expected = {}
    for name, cfg in cases.items():
        d = out / name
        cfg.save_pretrained(str(d))
        if name in LEAVE_OUT:
            # Leave out keys whose class defaults readers must supply.
            saved = json.loads((d / "config.json").read_text())
            for key in LEAVE_OUT[name]:
                saved.pop(key)
            (d / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
        expected[name] = resolved(AutoConfig.from_pretrained(str(d)))
    # A transformers 4 style file: rope_theta at top level and rope_scaling with "type".
    legacy = out / "mistral_legacy_yarn"
    legacy.mkdir(parents=True, exist_ok=True)
    (legacy / "config.json").write_text(json.dumps({
        "model_type": "mistral", **small, "head_dim": 16, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072, "sliding_window": None, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768,
                         "beta_fast": 32.0, "beta_slow": 1.0},
        "bos_token_id": 1, "eos_token_id": [2, 5], "tie_word_embeddings": False}, indent=2) + "\n")
    expected["mistral_legacy_yarn"] = resolved(AutoConfig.from_pretrained(str(legacy)))

    params = {
        "ministral_8b_params": {"dim": 64, "n_layers": 6, "head_dim": 16, "hidden_dim": 96, "n_heads": 4,
                                "n_kv_heads": 2, "norm_eps": 1e-5, "vocab_size": 96, "rope_theta": 1e8,
                                "sliding_window": [32768, 32768, None], "max_seq_len": 131072},
        "ministral3_params": {"dim": 64, "n_layers": 2, "head_dim": 32, "hidden_dim": 96, "n_heads": 2,
                              "n_kv_heads": 1, "norm_eps": 1e-5, "vocab_size": 96, "rope_theta": 1e6,
                              "tied_embeddings": True, "max_position_embeddings": 262144,
                              "yarn": {"original_max_position_embeddings": 16384, "factor": 16.0,
                                       "apply_scale": False, "beta": 32.0, "alpha": 1.0},
                              "llama_4_scaling": {"original_max_position_embeddings": 16384, "beta": 0.1}},
        "mistral_7b_params": {"dim": 64, "n_layers": 2, "head_dim": 16, "hidden_dim": 96, "n_heads": 4,
                              "n_kv_heads": 2, "norm_eps": 1e-5, "vocab_size": 96, "sliding_window": 4096},
    }
    for name, p in params.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "params.json").write_text(json.dumps(p, indent=2) + "\n")
        expected[name] = from_params(p)
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")


# Keys removed from saved config.json files so that class defaults are exercised.
LEAVE_OUT = {
    "mistral_default_window": ("sliding_window", "rms_norm_eps", "max_position_embeddings", "bos_token_id",
                               "eos_token_id", "pad_token_id", "tie_word_embeddings", "head_dim",
                               "rope_parameters"),
    "ministral3_defaults": ("head_dim", "rope_parameters", "pad_token_id", "rms_norm_eps",
                            "max_position_embeddings"),
}


def resolved(cfg):
    """What transformers' model classes use from a loaded config."""
    outer_tie = cfg.tie_word_embeddings
    t = cfg.get_text_config()
    n = t.num_hidden_layers
    window = getattr(t, "sliding_window", None) if t.model_type != "llama" else None
    layer_types = getattr(t, "layer_types", None)
    per_layer = [window if lt == "sliding_attention" else None for lt in layer_types] if layer_types else [window] * n
    eos = t.eos_token_id
    return {
        "model_type": t.model_type, "vocab_size": t.vocab_size, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "num_layers": n,
        "num_heads": t.num_attention_heads, "num_kv_heads": t.num_key_value_heads,
        "head_dim": getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads,
        "rms_norm_eps": t.rms_norm_eps, "rope": dict(t.rope_parameters),
        "max_position_embeddings": t.max_position_embeddings, "sliding_window": per_layer,
        "tie_word_embeddings": outer_tie, "bos_token_id": t.bos_token_id,
        "eos_token_ids": eos if isinstance(eos, list) else ([] if eos is None else [eos]),
        "pad_token_id": t.pad_token_id,
    }


def from_params(p):
    """The values vLLM's params.json adapter and mistral-inference derive."""
    n = p["n_layers"]
    sw = p.get("sliding_window")
    per_layer = [sw[i % len(sw)] for i in range(n)] if isinstance(sw, list) else [sw] * n
    rope = {"rope_type": "default", "rope_theta": p.get("rope_theta", 1e6)}
    if "yarn" in p:
        y = p["yarn"]
        rope.update({"rope_type": "yarn", "factor": y["factor"],
                     "original_max_position_embeddings": y["original_max_position_embeddings"],
                     "beta_fast": y["beta"], "beta_slow": y["alpha"]})
        if y.get("apply_scale") is False:
            rope.update({"mscale": 1.0, "mscale_all_dim": 1.0})
    if "llama_4_scaling" in p:
        rope["llama_4_scaling_beta"] = p["llama_4_scaling"]["beta"]
        rope["llama_4_original_max_position_embeddings"] = p["llama_4_scaling"]["original_max_position_embeddings"]
    return {
        "model_type": "mistral", "vocab_size": p["vocab_size"], "hidden_size": p["dim"],
        "intermediate_size": p["hidden_dim"], "num_layers": n, "num_heads": p["n_heads"],
        "num_kv_heads": p.get("n_kv_heads", p["n_heads"]), "head_dim": p.get("head_dim", p["dim"] // p["n_heads"]),
        "rms_norm_eps": p["norm_eps"], "rope": rope,
        "max_position_embeddings": p.get("max_position_embeddings", p.get("max_seq_len", 128000)),
        "sliding_window": per_layer, "tie_word_embeddings": p.get("tied_embeddings", False),
        "bos_token_id": None, "eos_token_ids": [], "pad_token_id": None,
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    write_quant_vectors()
    rng = np.random.default_rng(SEED + 1)
    write_all_types_gguf(rng)
    write_safetensors(rng)
    write_smollm2_facts()
    write_names_and_rope(rng)
    write_arch_configs()


if __name__ == "__main__":
    main()
