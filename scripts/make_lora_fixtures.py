#!/usr/bin/env python3
"""LoRA training reference fixtures for bora-model and bora-train, from PyTorch + PEFT (fp32).

Run from anywhere: `scripts/make_lora_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Reads the tiny models of
`crates/bora-model/tests/fixtures/tiny/` (from `scripts/make_model_fixtures.py`) and writes
`crates/bora-model/tests/fixtures/lora/`:

- `<model>.<init>.safetensors` for every tiny model and two initial adapters: `peft` (PEFT's own
  init: A Kaiming-uniform, B zero) and `random` (B random too, so every gradient path carries
  signal). Each holds
  - `inputs`, `targets` (i64 [2, T]; target -100 = masked, the first 3 of each row), one
    unpacked batch of 2 sequences with positions 0..T;
  - `init.<peft name>`: the adapter before training;
  - `loss_sum.1`, `loss_sum.2` (f64 [1]): the summed token loss before each AdamW step, and
    `count` (i64 [1]) the number of unmasked targets;
  - `grad.<peft name>`: the gradient of the summed loss at the initial adapter;
  - `step1.<peft name>`, `step2.<peft name>`: the adapter after each AdamW step on the mean
    loss (summed loss / count) with the same batch.
  Hyperparameters are in the safetensors metadata (`r`, `lora_alpha`, `lr`, `beta1`,
  `beta2`, `eps`, `weight_decay`; no dropout).
- `llama_adapter/`: the `random` llama adapter as PEFT saves it (adapter_config.json +
  adapter_model.safetensors), for `Lora::load_peft`.
"""
import json
import shutil

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

FIX = ROOT / "crates" / "bora-model" / "tests" / "fixtures"
TINY = FIX / "tiny"
OUT = FIX / "lora"
MODELS = ["llama", "mistral_v01", "ministral3", "ministral8b", "nemo"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
HP = dict(r=4, lora_alpha=8.0, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
SEQ, ROWS, MASKED = 8, 2, 3


def peft_name(name):
    """The name PEFT saves a trainable parameter under (adapter name stripped)."""
    return name.replace(".default.", ".")


def run(model_name, init):
    torch.manual_seed(1234)
    base = AutoModelForCausalLM.from_pretrained(
        TINY / model_name, dtype=torch.float32, attn_implementation="eager"
    )
    cfg = LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], lora_dropout=0.0,
                     target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    params = {peft_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    if init == "random":
        with torch.no_grad():
            for n, p in params.items():
                if ".lora_B." in n:
                    p.copy_(0.2 * torch.randn_like(p))
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(99)
    tokens = torch.randint(0, vocab, (ROWS, SEQ + 1), generator=g)
    inputs = tokens[:, :SEQ].clone()
    targets = tokens[:, 1:].clone()
    targets[:, :MASKED] = -100
    count = int((targets != -100).sum())
    out = {
        "inputs": inputs,
        "targets": targets,
        "count": torch.tensor([count], dtype=torch.int64),
    }
    for n, p in params.items():
        out[f"init.{n}"] = p.detach().clone()
    opt = torch.optim.AdamW(list(params.values()), lr=HP["lr"], betas=(HP["beta1"], HP["beta2"]),
                            eps=HP["eps"], weight_decay=HP["weight_decay"])
    model.train()
    for step in (1, 2):
        opt.zero_grad()
        logits = model(input_ids=inputs).logits
        loss_sum = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum")
        out[f"loss_sum.{step}"] = torch.tensor([loss_sum.item()], dtype=torch.float64)
        (loss_sum / count).backward()
        if step == 1:
            for n, p in params.items():
                out[f"grad.{n}"] = (p.grad * count).detach().clone()
        opt.step()
        for n, p in params.items():
            out[f"step{step}.{n}"] = p.detach().clone()
    meta = {k: repr(v) for k, v in HP.items()}
    save_file({k: v.contiguous() for k, v in out.items()},
              str(OUT / f"{model_name}.{init}.safetensors"), metadata=meta)
    return model, out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        for init in ("peft", "random"):
            run(name, init)
            print(f"{name}.{init}")
    # The random llama adapter before training, as PEFT saves it.
    torch.manual_seed(1234)
    base = AutoModelForCausalLM.from_pretrained(TINY / "llama", dtype=torch.float32)
    cfg = LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], lora_dropout=0.0,
                     target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.2 * torch.randn_like(p))
    dest = OUT / "llama_adapter"
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(str(dest))
    # PEFT records where the base came from; keep the repo free of this machine's paths.
    config_path = dest / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "crates/bora-model/tests/fixtures/tiny/llama"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    readme = dest / "README.md"
    if readme.exists():
        readme.unlink()


if __name__ == "__main__":
    main()
