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

Under `torchrun --nproc_per_node N` (a multi-GPU flavor) the run stays the same: the
micro-batches of each accumulation window are shared out across the N processes (micro-batch
`i` of a window to rank `i mod N`), the LoRA gradients and the window's loss are summed
across them (all-reduce) before the one normalisation by the window's trained tokens, and
every rank takes the same optimizer step. Rank 0 alone writes, uploads and prints.
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


class Ranks:
    """This process's place among torchrun's processes: `rank` of `world` (0 of 1 alone)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        self.local = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
            self.rank = torch.distributed.get_rank()

    @property
    def leader(self):
        return self.rank == 0

    def owns(self, index):
        """Whether micro-batch `index` of a window is this rank's."""
        return index % self.world == self.rank

    def sum_(self, tensor):
        """Sums `tensor` across the ranks, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def close(self):
        if self.world > 1:
            torch.distributed.destroy_process_group()


def pick_device_and_dtype(job, ranks):
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(ranks.local)
    device = torch.device("cuda", ranks.local) if cuda else torch.device("cpu")
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
        kwargs["device_map"] = {"": device}
    model_path = job["model"]
    if job.get("gguf_file"):
        kwargs["gguf_file"] = job["gguf_file"]
    if job.get("revision"):
        kwargs["revision"] = job["revision"]
    base = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    if job.get("qlora") != "nf4":
        base.to(device)
    elif device.type == "cpu":
        # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for its bf16 kernel
        # on the first forward in eval mode without gradients (a validation), its block maxima
        # rounded to bf16, and computes in bf16 from then on. Kept off, the weight stays the
        # NF4 base dequantized in f32, as bora computes with it.
        for module in base.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
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


def validation_loss(model, val, device, window, dtype, count, ranks):
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for i in range(count):
            if ranks.owns(i):
                ce, _ = loss_sum(model, val, i, device, window, dtype)
                total += float(ce)
    model.train()
    tokens = sum(trained_tokens(val, i) for i in range(count))
    return float(ranks.sum_(total)) / max(tokens, 1)


def trained_tokens(tensors, i):
    return int((tensors[f"targets.{i}"] != -100).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--hub-repo", help="model repo to upload checkpoints and the adapter to")
    ap.add_argument("--hub-path", default="", help="folder of --hub-repo for them")
    args = ap.parse_args()
    job = load_job(args.job)
    ranks = Ranks()
    torch.manual_seed(job.get("seed", 0))
    device, dtype = pick_device_and_dtype(job, ranks)
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
    if ranks.leader:
        args.out.mkdir(parents=True, exist_ok=True)
        metrics = open(args.out / "metrics.jsonl", "a")
    micro = 0
    for step in range(job["first_step"] + 1, job["total_steps"] + 1):
        started = time.time()
        optimizer.zero_grad(set_to_none=False)
        count = job["micro_batches"][step - job["first_step"] - 1]
        window_loss = torch.zeros((), dtype=torch.float64)
        for i in range(count):
            if ranks.owns(i):
                ce, _ = loss_sum(model, batches, micro + i, device, window, dtype)
                ce.backward()
                window_loss += float(ce)
        window_tokens = sum(trained_tokens(batches, micro + i) for i in range(count))
        micro += count
        grads = []
        for _, p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(ranks.sum_(p.grad))
        scale = 1.0 / max(window_tokens, 1)
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
        loss = float(ranks.sum_(window_loss)) / max(window_tokens, 1)
        if not math.isfinite(loss):
            if ranks.leader:
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
            row["val_loss"] = validation_loss(model, val, device, window, dtype, val_count, ranks)
        if not ranks.leader:
            continue
        metrics.write(json.dumps(row) + "\n")
        metrics.flush()
        emit("step", **row)
        if step in job["checkpoint_steps"]:
            rel = f"checkpoints/step-{step}"
            save_state(args.out / rel, model, params, optimizer, True)
            emit("checkpoint", step=step, path=publish(args, args.out, rel))
    ranks.close()
    if not ranks.leader:
        return
    metrics.close()
    save_state(args.out / "adapter", model, params, optimizer, False)
    if torch.cuda.is_available():
        emit("memory", peak_bytes=torch.cuda.max_memory_allocated())
    emit("done", adapter=publish(args, args.out, "adapter"))

if __name__ == "__main__":
    main()
