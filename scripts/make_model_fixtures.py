#!/usr/bin/env python3
"""Reference fixtures for bora-model, produced by transformers (fp32) and gguf-py.

Run from anywhere: `scripts/make_model_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Writes under `crates/bora-model/tests/fixtures/`:

- `tiny/<name>/`: tiny random HF models (config.json + model.safetensors) of each supported
  architecture variant, with `expected.safetensors` holding the prompt ids (`prompt.N`, i64) and
  transformers' fp32 logits for every position (`logits.N`, f32 [T, V]).
- `tiny/mistral_v01_consolidated/`: the Mistral 7B v0.1 style model as a Mistral consolidated
  directory (params.json + consolidated.safetensors, q/k rows in the interleaved layout).
- `tiny/llama.gguf`, `tiny/llama_q8_0.gguf`: the Llama model written the way llama.cpp's
  converter does (q/k permuted back to interleaved); the Q8_0 copy gets its own expected logits
  (`tiny/llama_q8_0.expected.safetensors`) from transformers loading that GGUF.
- `smollm2/`: SmolLM2-135M-Instruct (the default Q4_1 GGUF, dequantized by transformers):
  `expected.json` (prompts, ids, per-position argmax / max|logit| / logsumexp / top-8, 64 greedy
  tokens with each step's top-1/top-2 logit margin) and `last_logits.safetensors` (full fp32
  logits of each prompt's last position).
"""
import json
import math
import os
import sys
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

OUT = ROOT / "crates" / "bora-model" / "tests" / "fixtures"
TINY = OUT / "tiny"
VOCAB = 96
PROMPT_LENS = [7, 23, 13]

# Each tiny model: transformers config overrides and the dtype its weights are saved in.
TINY_MODELS = {
    # Mistral 7B v0.1: sliding window (here 5) shorter than the prompts.
    "mistral_v01": (dict(model_type="mistral", hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         sliding_window=5, rope_theta=10000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False), torch.float16),
    # Mistral Nemo: head_dim (16) != hidden / heads (8), no window, bf16 weights.
    "nemo": (dict(model_type="mistral", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  sliding_window=None, rope_theta=1000000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=False), torch.bfloat16),
    # Ministral 8B: sliding and full attention layers interleaved.
    "ministral8b": (dict(model_type="ministral", hidden_size=32, intermediate_size=64,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         sliding_window=6, rope_theta=100000000.0, rms_norm_eps=1e-5,
                         layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                         tie_word_embeddings=False), torch.float32),
    # Ministral 3: YaRN with a small original context so prompts cross it, llama-4 query scaling,
    # tied embeddings. No mscale pair, so the YaRN attention factor differs from 1.
    "ministral3": (dict(model_type="ministral3", hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, max_position_embeddings=32, sliding_window=None,
                        rms_norm_eps=1e-5, tie_word_embeddings=True,
                        rope_parameters={"rope_type": "yarn", "rope_theta": 10.0, "factor": 4.0,
                                         "original_max_position_embeddings": 8,
                                         "beta_fast": 32.0, "beta_slow": 1.0,
                                         "llama_4_scaling_beta": 0.1}), torch.float32),
    # Llama (SmolLM2-like): GQA, tied embeddings, hidden 64 so rows are whole Q8_0 blocks.
    "llama": (dict(model_type="llama", hidden_size=64, intermediate_size=96,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                   max_position_embeddings=256), torch.float32),
}


def randomize(model, seed):
    """Default init (std 0.02) makes near-uniform logits, which would make a 1e-4 comparison
    meaningless; scale weights so activations and logits are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def prompts(seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=gen) for n in PROMPT_LENS]


def logits_for(model, ids):
    with torch.no_grad():
        return model(ids[None, :]).logits[0].float().numpy()


def expected_tensors(model, prompt_ids):
    out = {}
    for i, ids in enumerate(prompt_ids):
        out[f"prompt.{i}"] = ids.numpy().astype(np.int64)
        out[f"logits.{i}"] = logits_for(model, ids)
    return out


def save_state(path, state):
    from safetensors.torch import save_file as save_torch

    save_torch({k: v.contiguous() for k, v in state.items()}, str(path))


def make_tiny(name, overrides, dtype, seed, legacy_rope):
    overrides = dict(overrides)
    model_type = overrides.pop("model_type")
    cfg = AutoConfig.for_model(model_type, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                               pad_token_id=None, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    randomize(model, seed)
    # Round the weights to the saved dtype first, so the fp32 reference sees the stored values.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).float())
    d = TINY / name
    d.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(d, safe_serialization=True)
    (d / "generation_config.json").unlink(missing_ok=True)
    if legacy_rope:
        # Released Mistral checkpoints predate `rope_parameters`: keep one fixture in that form.
        cfg_json = json.loads((d / "config.json").read_text())
        cfg_json["rope_theta"] = cfg_json.pop("rope_parameters")["rope_theta"]
        (d / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    save_file(expected_tensors(model, prompts(seed)), str(d / "expected.safetensors"))
    return model


def interleave_rows(w, n_heads):
    """HF rotate-half rows -> Meta/GGUF interleaved rows (the inverse of transformers' converter)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def make_consolidated(model):
    cfg = model.config
    src = TINY / "mistral_v01_consolidated"
    src.mkdir(parents=True, exist_ok=True)
    names = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
                 "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
                 "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                 "mlp.up_proj": "feed_forward.w3"}
    state = {}
    for k, v in model.state_dict().items():
        if k in names:
            state[names[k]] = v
            continue
        layer = k.split(".")[2]
        rest = ".".join(k.split(".")[3:-1])
        w = v
        if rest == "self_attn.q_proj":
            w = interleave_rows(v, cfg.num_attention_heads)
        elif rest == "self_attn.k_proj":
            w = interleave_rows(v, cfg.num_key_value_heads)
        state[f"layers.{layer}.{per_layer[rest]}.weight"] = w
    save_state(src / "consolidated.safetensors", {k: v.to(torch.float16) for k, v in state.items()})
    params = {"dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers,
              "head_dim": cfg.hidden_size // cfg.num_attention_heads,
              "hidden_dim": cfg.intermediate_size, "n_heads": cfg.num_attention_heads,
              "n_kv_heads": cfg.num_key_value_heads, "norm_eps": cfg.rms_norm_eps,
              "vocab_size": cfg.vocab_size, "rope_theta": cfg.rope_parameters["rope_theta"],
              "sliding_window": cfg.sliding_window}
    (src / "params.json").write_text(json.dumps(params, indent=2) + "\n")


def make_gguf(model, path, quant):
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("bora tiny llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant else gguf.LlamaFileType.ALL_F32)
    if quant:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    # A minimal gpt2-style vocabulary so readers that expect one (transformers) accept the file.
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"<t{i}>" for i in range(cfg.vocab_size)])
    w.add_token_types([gguf.TokenType.NORMAL] * cfg.vocab_size)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.down_proj": "ffn_down", "mlp.up_proj": "ffn_up"}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue  # tied
        v = v.float()
        if k in names:
            name = names[k]
        else:
            layer = k.split(".")[2]
            rest = ".".join(k.split(".")[3:-1])
            name = f"blk.{layer}.{per_layer[rest]}.weight"
            if rest == "self_attn.q_proj":
                v = interleave_rows(v, cfg.num_attention_heads)
            elif rest == "self_attn.k_proj":
                v = interleave_rows(v, cfg.num_key_value_heads)
        arr = v.numpy().astype(np.float32)
        if quant and arr.ndim == 2:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_tiny_all():
    models = {}
    for seed, (name, (overrides, dtype)) in enumerate(TINY_MODELS.items(), start=11):
        models[name] = make_tiny(name, overrides, dtype, seed, legacy_rope=name == "mistral_v01")
        print("tiny", name)
    make_consolidated(models["mistral_v01"])
    make_gguf(models["llama"], TINY / "llama.gguf", quant=False)
    make_gguf(models["llama"], TINY / "llama_q8_0.gguf", quant=True)
    llama_seed = 11 + list(TINY_MODELS).index("llama")
    # transformers reading the f32 GGUF back must give the HF logits: checks the q/k permutation.
    f32 = AutoModelForCausalLM.from_pretrained(TINY, gguf_file="llama.gguf", dtype=torch.float32)
    for ids in prompts(llama_seed):
        diff = np.abs(logits_for(f32.eval(), ids) - logits_for(models["llama"], ids)).max()
        assert diff < 1e-4, f"llama.gguf read back by transformers differs by {diff}"
    # The Q8_0 copy's reference comes from transformers reading that very file.
    q8 = AutoModelForCausalLM.from_pretrained(TINY, gguf_file="llama_q8_0.gguf",
                                              dtype=torch.float32).eval()
    save_file(expected_tensors(q8, prompts(llama_seed)), str(TINY / "llama_q8_0.expected.safetensors"))


SMOL_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    None,  # filled with the model's chat template applied to one user turn
]
GREEDY = 64
TOPK = 8


def default_model_path():
    home = os.environ.get("BORA_HOME") or os.path.join(os.environ["HOME"], ".cache", "bora")
    return Path(home) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def make_smollm2():
    from transformers import AutoTokenizer

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32).eval()
    texts = list(SMOL_PROMPTS)
    texts[2] = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                       tokenize=False, add_generation_prompt=True)
    out_dir = OUT / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)
    records, last = [], {}
    for i, text in enumerate(texts):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            res = model(torch.tensor([ids]), use_cache=True)
        logits = res.logits[0].float()
        top = torch.topk(logits, TOPK, dim=-1)
        greedy, margins, cache = [], [], res.past_key_values
        step_logits = logits[-1]
        with torch.no_grad():
            for _ in range(GREEDY):
                top2 = torch.topk(step_logits, 2).values
                margins.append(float(top2[0] - top2[1]))
                nxt = int(step_logits.argmax())
                greedy.append(nxt)
                step = model(torch.tensor([[nxt]]), past_key_values=cache, use_cache=True)
                cache = step.past_key_values
                step_logits = step.logits[0, -1].float()
        records.append({
            "text": text,
            "ids": ids,
            "argmax": logits.argmax(-1).tolist(),
            "max_abs": logits.abs().max(-1).values.tolist(),
            "logsumexp": torch.logsumexp(logits, -1).tolist(),
            "top_ids": top.indices.tolist(),
            "top_values": top.values.tolist(),
            "greedy": greedy,
            # top-1 minus top-2 logit at each greedy step: how close each choice was to a tie.
            "greedy_margin": margins,
            "greedy_text": tok.decode(greedy),
        })
        last[f"last_logits.{i}"] = logits[-1].numpy()
        print("smollm2 prompt", i, len(ids), repr(tok.decode(greedy)[:60]))
    meta = {"model": path.name, "transformers": __import__("transformers").__version__,
            "prompts": records}
    (out_dir / "expected.json").write_text(json.dumps(meta) + "\n")
    save_file(last, str(out_dir / "last_logits.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    what = sys.argv[1:] or ["tiny", "smollm2"]
    if "tiny" in what:
        make_tiny_all()
    if "smollm2" in what:
        make_smollm2()
