#!/usr/bin/env python3
"""bora's GPU trainer: one LoRA run from a job bora prepared, in PyTorch (transformers + peft).

bora validates, tokenizes, packs and orders the data, resolves the config and initializes the
adapter; this trainer only consumes that job and reproduces bora's training definition
(crates/bora-train: recipe.rs, optim.rs, grad.rs, schedule.rs; crates/bora-model: lora.rs):

- LoRA `y = W x + s B A dropout(x)` on the configured projections, `s = alpha/r` (rsLoRA:
  `alpha/sqrt(r)`), starting from bora's initial adapter (PEFT layout), kept in f32;
- the loss of a micro-batch is the sum of token cross-entropies over the loss mask; the
  gradients of an accumulation window are scaled by 1/(trained tokens of the window), and the
  logged loss is that window's mean;
- clipping of the global norm (`max/(norm + 1e-6)`, torch's), AdamW as torch's single-tensor
  AdamW with bora's betas/eps/decay, the learning rate of each step as bora computed it;
- attention inside each packed example only (bora's segments), RoPE positions restarting per
  example, the model's sliding window applied on top.

Job directory (written by `bora train --on torch|hf-jobs`):
  job.json                     config and step plan (see `load_job`)
  batches.safetensors          `inputs.I`, `targets.I` (-100 where not trained), `positions.I`,
                               `segments.I` (example id per token) for micro-batch I, int32 [b, t]
  val.safetensors              the validation batches, same names (absent without validation)
  initial_adapter/             bora's initial adapter (adapter_config.json + adapter_model.safetensors)

Output directory: `metrics.jsonl` (bora's schema), `checkpoints/step-N/` (PEFT adapter files and
`optimizer.safetensors` with `NAME.exp_avg` / `NAME.exp_avg_sq`), `adapter/` (the final PEFT
adapter). Each step, checkpoint and the end are also printed to stdout as one JSON line with an
`event` key, which bora reads to mirror the run; directories are named relative to `--out`.
With `--hub-repo REPO --hub-path FOLDER` (a Hugging Face Job) each checkpoint and the final
adapter are uploaded to `FOLDER/<dir>` of that repo before their line is printed, so bora,
following the job's log, can download them.

On a GPU: bf16 base (or NF4 through bitsandbytes for QLoRA), SDPA attention, gradient
checkpointing where the job asks for it. On the CPU: f32 everywhere, for parity with bora.
"""
import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def load_job(job_dir):
    """job.json: `model` (path or Hub id; `gguf_file` for a GGUF base), `micro_batches` per
    step (`grad_accum`), `total_steps`, `first_step`, `lrs` (one per step, from 1), `eval_steps`,
    `checkpoint_steps`, `max_grad_norm`, `betas`, `eps`, `weight_decay`, `qlora` ("" or "nf4"),
    `recompute`, `sliding_window` (null or tokens), `dtype` ("auto", "float32", "bfloat16")."""
    return json.loads((job_dir / "job.json").read_text())


def pick_device_and_dtype(job):
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    want = job.get("dtype", "auto")
    if want == "auto":
        dtype = torch.bfloat16 if cuda else torch.float32
    else:
        dtype = getattr(torch, want)
    return device, dtype


def load_model(job, job_dir, device, dtype):
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
    if job.get("qlora") == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model_path = job["model"]
    if job.get("gguf_file"):
        kwargs["gguf_file"] = job["gguf_file"]
    if job.get("revision"):
        kwargs["revision"] = job["revision"]
    base = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if job.get("qlora") != "nf4":
        base.to(device)
    base.config.use_cache = False
    if job.get("recompute"):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()
    model = PeftModel.from_pretrained(base, str(job_dir / "initial_adapter"), is_trainable=True)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
    return model


def attention_mask(segments, window):
    """[b, 1, t, t] booleans: a token sees the earlier tokens of its own example (and, with a
    sliding window, only the last `window` of them)."""
    t = segments.shape[1]
    same = segments[:, :, None] == segments[:, None, :]
    idx = torch.arange(t, device=segments.device)
    causal = idx[None, :] <= idx[:, None]
    mask = same & causal[None]
    if window:
        mask &= (idx[:, None] - idx[None, :] < window)[None]
    return mask[:, None]


def batch(tensors, i, device):
    get = lambda k: tensors[f"{k}.{i}"].to(device=device, dtype=torch.long)  # noqa: E731
    return get("inputs"), get("targets"), get("positions"), get("segments")


def loss_sum(model, tensors, i, device, window, dtype):
    inputs, targets, positions, segments = batch(tensors, i, device)
    mask = attention_mask(segments, window)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(input_ids=inputs, attention_mask=mask, position_ids=positions).logits
    ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return ce, int((targets != -100).sum())


def lora_params(model):
    """(PEFT name as bora saves it, parameter), in the model's order."""
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.append((name.replace(".default", ""), p))
    return out


def save_state(dirpath, model, params, optimizer, with_optimizer):
    tmp = dirpath.with_name(dirpath.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    if with_optimizer:
        moments = {}
        for name, p in params:
            st = optimizer.state.get(p, {})
            moments[f"{name}.exp_avg"] = st.get("exp_avg", torch.zeros_like(p)).detach().float().cpu().contiguous()
            moments[f"{name}.exp_avg_sq"] = st.get("exp_avg_sq", torch.zeros_like(p)).detach().float().cpu().contiguous()
        save_file(moments, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
    if dirpath.exists():
        shutil.rmtree(dirpath)
    os.replace(tmp, dirpath)


def publish(args, out_dir, rel):
    """Uploads `out_dir/rel` to the job's Hub folder (when there is one); returns `rel`."""
    if args.hub_repo:
        from huggingface_hub import HfApi

        HfApi().upload_folder(
            repo_id=args.hub_repo,
            folder_path=str(out_dir / rel),
            path_in_repo=f"{args.hub_path}/{rel}",
            commit_message=f"bora trainer: {rel}",
        )
    return rel


def validation_loss(model, val, device, window, dtype, count):
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(count):
            ce, n = loss_sum(model, val, i, device, window, dtype)
            total += float(ce)
            tokens += n
    model.train()
    return total / max(tokens, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--hub-repo", help="model repo to upload checkpoints and the adapter to")
    ap.add_argument("--hub-path", default="", help="folder of --hub-repo for them")
    args = ap.parse_args()
    job = load_job(args.job)
    torch.manual_seed(job.get("seed", 0))
    device, dtype = pick_device_and_dtype(job)
    model = load_model(job, args.job, device, dtype)
    model.train()
    params = lora_params(model)
    betas = tuple(job["betas"])
    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=0.0, betas=betas, eps=job["eps"], weight_decay=job["weight_decay"], foreach=False
    )
    opt_file = args.job / "initial_optimizer.safetensors"
    if opt_file.exists():
        moments = load_file(str(opt_file))
        for name, p in params:
            optimizer.state[p] = {
                "step": torch.tensor(float(job["first_step"])),
                "exp_avg": moments[f"{name}.exp_avg"].to(device),
                "exp_avg_sq": moments[f"{name}.exp_avg_sq"].to(device),
            }
    batches = load_file(str(args.job / "batches.safetensors"))
    val_path = args.job / "val.safetensors"
    val = load_file(str(val_path)) if val_path.exists() else None
    val_count = job.get("val_batches", 0)
    window = job.get("sliding_window")
    accum = job["grad_accum"]
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = open(args.out / "metrics.jsonl", "a")
    micro = 0
    for step in range(job["first_step"] + 1, job["total_steps"] + 1):
        started = time.time()
        optimizer.zero_grad(set_to_none=False)
        window_loss, window_tokens = 0.0, 0
        for _ in range(job["micro_batches"][step - job["first_step"] - 1]):
            ce, n = loss_sum(model, batches, micro, device, window, dtype)
            ce.backward()
            window_loss += float(ce)
            window_tokens += n
            micro += 1
        scale = 1.0 / max(window_tokens, 1)
        grads = [p.grad for _, p in params]
        for g in grads:
            g.mul_(scale)
        if job["max_grad_norm"] > 0:
            norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in params], job["max_grad_norm"]))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        lr = job["lrs"][step - 1]
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        loss = window_loss / max(window_tokens, 1)
        if not math.isfinite(loss):
            emit("error", step=step, message=f"step {step}: the loss is {loss}")
            sys.exit(1)
        row = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": norm,
            "tokens_per_s": window_tokens / max(time.time() - started, 1e-9),
        }
        if step in job["eval_steps"] and val is not None and val_count:
            row["val_loss"] = validation_loss(model, val, device, window, dtype, val_count)
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        emit("step", **row)
        if step in job["checkpoint_steps"]:
            rel = f"checkpoints/step-{step}"
            save_state(args.out / rel, model, params, optimizer, True)
            emit("checkpoint", step=step, path=publish(args, args.out, rel))
    metrics.close()
    save_state(args.out / "adapter", model, params, optimizer, False)
    if torch.cuda.is_available():
        emit("memory", peak_bytes=torch.cuda.max_memory_allocated())
    emit("done", adapter=publish(args, args.out, "adapter"))


if __name__ == "__main__":
    main()
