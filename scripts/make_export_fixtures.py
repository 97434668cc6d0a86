#!/usr/bin/env python3
"""Reference logits for bora's exports, from transformers + PEFT (fp32).

Run from anywhere: `scripts/make_export_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Reads the tiny models of
`crates/bora-model/tests/fixtures/tiny/` and writes `crates/bora-model/tests/fixtures/export/`:

- `mistral_v01_adapter/`: a PEFT adapter (r=4, alpha=8, all 7 projections, B random so every
  projection moves the logits) on the untied, sliding-window Mistral model, as PEFT saves it.
  The tied Llama model uses `fixtures/lora/llama_adapter/` (from `make_lora_fixtures.py`).
- `<model>.logits.safetensors` for `llama` and `mistral_v01`: `prompt.K` (i64 [T]) and
  `logits.K` (f32 [T, vocab]) of `PeftModel(base, adapter)` on each prompt K, and
  `merged.K`: the same after `merge_and_unload()` (peft's own merge).

`crates/bora-model/tests/export_reference.rs` exports the same base + adapter with bora
(`peft` and `merged`, from the HF directory, the GGUF and the consolidated directory) and
checks that bora reloading each export reproduces these logits.
"""
import json
import shutil

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

FIX = ROOT / "crates" / "bora-model" / "tests" / "fixtures"
TINY = FIX / "tiny"
OUT = FIX / "export"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_LENGTHS = [9, 14]


def base(name):
    return AutoModelForCausalLM.from_pretrained(
        TINY / name, dtype=torch.float32, attn_implementation="eager"
    )


def make_adapter(name, dest):
    """A PEFT adapter with random B on `name`, saved to `dest` without machine paths."""
    torch.manual_seed(4321)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS,
                     task_type="CAUSAL_LM")
    model = get_peft_model(base(name), cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(0.2 * torch.randn_like(p))
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(str(dest))
    config_path = dest / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = f"crates/bora-model/tests/fixtures/tiny/{name}"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    readme = dest / "README.md"
    if readme.exists():
        readme.unlink()


def logits(name, adapter_dir):
    model = PeftModel.from_pretrained(base(name), str(adapter_dir)).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(77)
    out = {}
    with torch.no_grad():
        prompts = [torch.randint(0, vocab, (n,), generator=g) for n in PROMPT_LENGTHS]
        for k, p in enumerate(prompts):
            out[f"prompt.{k}"] = p.to(torch.int64)
            out[f"logits.{k}"] = model(input_ids=p[None]).logits[0].float()
        merged = model.merge_and_unload()
        for k, p in enumerate(prompts):
            out[f"merged.{k}"] = merged(input_ids=p[None]).logits[0].float()
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    make_adapter("mistral_v01", OUT / "mistral_v01_adapter")
    adapters = {"llama": FIX / "lora" / "llama_adapter", "mistral_v01": OUT / "mistral_v01_adapter"}
    for name, adapter in adapters.items():
        out = logits(name, adapter)
        save_file({k: v.contiguous() for k, v in out.items()},
                  str(OUT / f"{name}.logits.safetensors"))
        print(name, {k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
