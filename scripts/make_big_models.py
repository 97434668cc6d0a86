#!/usr/bin/env python3
"""Random-weight bf16 models with the real dimensions of Mistral-7B-v0.3 and Mistral-Nemo, for
measuring load time, peak memory and speed at full size without downloading 14-25 GB.

Each model is a Hugging Face directory as transformers 5 writes it: `config.json` (the
`MistralConfig` of the real model, `rope_parameters` included), sharded
`model-0000K-of-0000N.safetensors` with `model.safetensors.index.json`, and the real tokenizer
(`tokenizer.model.v3` for the 7B, Tekken for Nemo) from `scripts/fetch-tokenizers.sh`'s cache.
Weights are N(0, 0.02) in bf16, written by the `safetensors` library; `--layers` keeps fewer
decoder layers where only the speed per layer matters.

    python3 scripts/make_big_models.py mistral-7b-v0.3 models/m7b [--layers 32]
    python3 scripts/make_big_models.py mistral-nemo models/nemo --layers 4

The files are big (14.5 GB for all 32 layers of the 7B): check `df -h` first, keep them out of
the repository (`models/` is ignored) and delete them after measuring.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-bigmodels"
PACKAGES = ["safetensors==0.6.2", "numpy==2.2.6"]

# config.json of the real models as transformers 5.24 writes a MistralConfig (from the Hub's
# mistralai/Mistral-7B-v0.3 and mistralai/Mistral-Nemo-Base-2407 configs).
CONFIGS = {
    "mistral-7b-v0.3": {
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "dtype": "bfloat16", "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "pad_token_id": None,
        "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_window": None, "tie_word_embeddings": False, "transformers_version": "5.24.0",
        "use_cache": True, "vocab_size": 32768,
    },
    "mistral-nemo": {
        "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
        "dtype": "bfloat16", "eos_token_id": 2, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 5120, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 1024000, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 40, "num_key_value_heads": 8, "pad_token_id": None,
        "rms_norm_eps": 1e-05, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_window": None, "tie_word_embeddings": False, "transformers_version": "5.24.0",
        "use_cache": True, "vocab_size": 131072,
    },
}
TOKENIZERS = {
    "mistral-7b-v0.3": ("mistral_instruct_tokenizer_240323.model.v3", "tokenizer.model.v3"),
    "mistral-nemo": ("tekken_240718.json", "tekken.json"),
}
SHARD_BYTES = 4 << 30  # transformers' default max_shard_size is 5 GB; smaller keeps RAM low here


def ensure_venv(extra=()):
    """Runs the calling script again inside `.venv-bigmodels`, with PACKAGES and `extra` installed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", *PACKAGES, *extra])
    os.execv(str(python), [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]])


def main():
    ensure_venv()
    import numpy as np
    from safetensors import serialize_file

    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(CONFIGS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, help="decoder layers (default: the real model's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    config = dict(CONFIGS[args.shape])
    if args.layers:
        config["num_hidden_layers"] = args.layers
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, d)}
    for l in range(config["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes.update({
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
            p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
            p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
        })
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (v, d)

    # One pool of N(0, 0.02) bf16 values; each tensor is a window of it at a random offset, so
    # the script writes gigabytes in seconds and every tensor still differs.
    rng = np.random.default_rng(args.seed)
    pool = (rng.standard_normal(1 << 25, dtype=np.float32) * 0.02).view(np.uint32)
    pool = ((pool + 0x7FFF + ((pool >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    pool = np.concatenate([pool, pool])
    ones = np.full(1, 0x3F80, dtype=np.uint16)  # bf16 1.0 for the norms, as a fresh model has

    def values(shape):
        n = int(np.prod(shape))
        if len(shape) == 1:
            return np.repeat(ones, n).tobytes()
        out = np.empty(n, dtype=np.uint16)
        half = len(pool) // 2
        for start in range(0, n, half):
            k = min(half, n - start)
            off = int(rng.integers(0, half))
            out[start:start + k] = pool[off:off + k]
        return out.tobytes()

    args.out.mkdir(parents=True, exist_ok=True)
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        nbytes = 2 * int(np.prod(shape))
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = shape
        size += nbytes
    shards.append(current)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, 1):
        file = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: {"dtype": "bfloat16", "shape": list(shape), "data": values(shape)}
                   for name, shape in shard.items()}
        serialize_file(tensors, str(args.out / file), metadata={"format": "pt"})
        del tensors
        for name, shape in shard.items():
            weight_map[name] = file
            total += 2 * int(np.prod(shape))
        print(f"wrote {file}", flush=True)
    (args.out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    cache = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora")) / "tokenizers"
    src, dst = TOKENIZERS[args.shape]
    if not (cache / src).is_file():
        sys.exit(f"{cache / src} is missing: run scripts/fetch-tokenizers.sh")
    shutil.copyfile(cache / src, args.out / dst)
    print(f"{args.out}: {config['num_hidden_layers']} layers, {total / 1e9:.2f} GB of bf16")


if __name__ == "__main__":
    main()
