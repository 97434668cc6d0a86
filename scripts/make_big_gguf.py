#!/usr/bin/env python3
"""A GGUF of a model directory from `scripts/make_big_models.py`, written by gguf-py, so that
llama.cpp and bora decode the very same quantized weights (`bench/decode.py --model`).

The file is what llama.cpp's `convert_hf_to_gguf.py` writes for a `MistralForCausalLM`
(architecture `llama`): q/k rows permuted to GGUF's rotary layout, norms in F32, the
SentencePiece vocabulary (pieces, scores, token types) of the directory's `tokenizer.model.v3`.
Weights are quantized by gguf-py's own codecs: `q8_0` makes every matrix Q8_0 (as
`convert_hf_to_gguf.py --outtype q8_0`); `q4_0` makes the decoder's projections and the token
embeddings Q4_0 and the output head Q8_0 (llama-quantize's Q4_0 would give the head Q6_K).
`--layers N` keeps the first N decoder layers, for speed per layer without the whole model.

    python3 scripts/make_big_gguf.py models/m7b models/m7b-8l.q4_0.gguf --type q4_0 --layers 8

Tensors are read from the safetensors shards and written one at a time, so the script holds
one tensor in memory, not the model.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_big_models import ensure_venv  # noqa: E402

GGUF_PACKAGES = ["gguf==0.19.0", "sentencepiece==0.2.1"]


def bf16_tensors(model_dir):
    """name -> (shard path, shape, byte offset) of every tensor, from the safetensors headers."""
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        path = model_dir / shard
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] != "BF16":
                sys.exit(f"{path}: {name} is {info['dtype']}, this script reads BF16")
            out[name] = (path, tuple(info["shape"]), 8 + n + info["data_offsets"][0])
    return out


def main():
    ensure_venv(extra=GGUF_PACKAGES)
    import numpy as np
    import gguf
    import sentencepiece as spm

    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, help="directory written by make_big_models.py")
    ap.add_argument("out", type=Path)
    ap.add_argument("--type", choices=["q8_0", "q4_0"], required=True)
    ap.add_argument("--layers", type=int, help="keep the first N decoder layers (default: all)")
    args = ap.parse_args()

    config = json.loads((args.model / "config.json").read_text())
    layers = args.layers or config["num_hidden_layers"]
    if not 0 < layers <= config["num_hidden_layers"]:
        sys.exit(f"--layers {layers}: the model has {config['num_hidden_layers']}")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    Q8, Q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
    matrix_type = Q8 if args.type == "q8_0" else Q4

    names = {"model.embed_tokens.weight": ("token_embd.weight", matrix_type),
             "model.norm.weight": ("output_norm.weight", None),
             "lm_head.weight": ("output.weight", Q8)}
    for l in range(layers):
        for hf, gg in [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")]:
            names[f"model.layers.{l}.{hf}.weight"] = (f"blk.{l}.{gg}.weight", None)
        for hf, gg in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                       ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                       ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                       ("mlp.down_proj", "ffn_down")]:
            names[f"model.layers.{l}.{hf}.weight"] = (f"blk.{l}.{gg}.weight", matrix_type)
    sources = bf16_tensors(args.model)

    def load(name):
        path, shape, offset = sources[name]
        raw = np.fromfile(path, dtype="<u2", count=int(np.prod(shape)), offset=offset)
        x = (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        # convert_hf_to_gguf's LlamaModel.permute: HF's rotary halves to GGUF's interleaved pairs.
        if name.endswith("q_proj.weight") or name.endswith("k_proj.weight"):
            n = heads if name.endswith("q_proj.weight") else kv_heads
            x = x.reshape(n, 2, shape[0] // n // 2, shape[1]).swapaxes(1, 2).reshape(shape)
        return x

    tmp = args.out.with_name(args.out.name + ".tmp")
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(f"{args.model.name} ({layers} layers, {args.type})")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(config["head_dim"])
    w.add_value_length(config["head_dim"])
    w.add_rope_dimension_count(config["head_dim"])
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_vocab_size(config["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if args.type == "q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)

    sp = spm.SentencePieceProcessor(model_file=str(args.model / "tokenizer.model.v3"))
    if sp.vocab_size() != config["vocab_size"]:
        sys.exit(f"tokenizer.model.v3 has {sp.vocab_size()} pieces, config.json says {config['vocab_size']}")
    T = gguf.TokenType
    kinds = [(sp.is_unknown, T.UNKNOWN), (sp.is_control, T.CONTROL), (sp.is_unused, T.UNUSED),
             (sp.is_byte, T.BYTE)]
    types = [next((t for test, t in kinds if test(i)), T.NORMAL) for i in range(sp.vocab_size())]
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list([sp.id_to_piece(i).encode() for i in range(sp.vocab_size())])
    w.add_token_scores([sp.get_score(i) for i in range(sp.vocab_size())])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    for name, (gname, qtype) in names.items():
        shape = sources[name][1]
        if qtype is None:
            w.add_tensor_info(gname, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
        else:
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            w.add_tensor_info(gname, shape, np.dtype(np.float32), shape[0] * shape[1] // block * size,
                              raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, (gname, qtype) in names.items():
        x = load(name)
        w.write_tensor_data(x if qtype is None else gguf.quants.quantize(x, qtype))
        print(f"{gname}", flush=True)
    w.close()
    tmp.rename(args.out)
    print(f"{args.out}: {layers} layers, {args.out.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
