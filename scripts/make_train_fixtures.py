#!/usr/bin/env python3
"""Reference fixtures for bora-train, produced by torch, transformers, peft, numpy and tensorboard.

Run from anywhere: `scripts/make_train_fixtures.py` (it re-executes itself inside the repo's
`.venv-fixtures`, creating it if needed). Writes under `crates/bora-train/tests/fixtures/`:

- `adamw.json`: two runs of `torch.optim.AdamW` (different betas, eps, weight decay, and a
  learning rate changed between steps) over three seeded random f32 tensors: the initial
  parameters, the gradient fed at each step, the parameters after each step and the final
  moments.
- `schedules.json`: the LR multipliers `LambdaLR` gives step by step for transformers'
  `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
  `get_cosine_schedule_with_warmup`, for several (warmup, total) pairs.
- `clip.json`: `torch.nn.utils.clip_grad_norm_` on seeded gradients, once above and once below
  the limit: the returned total norm and the clipped gradients.
- `kaiming.json`: the bound `nn.init.kaiming_uniform_(a=sqrt(5))` draws from, recovered from
  the draws themselves (same seed, once through kaiming and once through `uniform_(-1, 1)`).
- `pcg64.json`: raw outputs of numpy's `PCG64` from a given 128-bit state and increment.
- `tfevents/sample.tfevents` + `tfevents/sample.json`: an events file written by torch's
  `SummaryWriter.add_scalar`, and its events as tensorboard's `LegacyEventFileLoader` reads them.
- `peft/<case>/adapter_config.json` + `peft/<case>/tensors.json`: what peft's `save_pretrained`
  writes for a tiny Mistral model, and the names and shapes in its `adapter_model.safetensors`.

Then, when `cargo` is on PATH, it checks the other direction: an events file written by
bora's `TensorBoardSink` (the ignored test `write_events_for_tensorboard_reader`) is read
back with tensorboard's `EventAccumulator` and its scalars compared (nothing is written).
"""
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from fixture_venv import ROOT, ensure_venv

ensure_venv(__file__)

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = ROOT / "crates" / "bora-train" / "tests" / "fixtures"
SEED = 20261126


def floats(t):
    """f32 values as Python floats: each prints as the shortest double that round-trips, which
    parses back to the identical f32."""
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def write_json(name, obj):
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1) + "\n")


def adamw_case(gen, lrs, betas, eps, weight_decay):
    shapes = [[3, 5], [7], [4, 4]]
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decay)
    case = {
        "betas": list(betas),
        "eps": eps,
        "weight_decay": weight_decay,
        "lrs": lrs,
        "shapes": shapes,
        "initial": [floats(p) for p in params],
        "grads": [],
        "after": [],
    }
    for lr in lrs:
        for group in opt.param_groups:
            group["lr"] = lr
        grads = [torch.randn(*s, generator=gen) * 0.1 for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        case["grads"].append([floats(g) for g in grads])
        case["after"].append([floats(p) for p in params])
    state = [opt.state[p] for p in params]
    case["exp_avg"] = [floats(s["exp_avg"]) for s in state]
    case["exp_avg_sq"] = [floats(s["exp_avg_sq"]) for s in state]
    case["step"] = int(state[0]["step"].item())
    return case


def make_adamw():
    gen = torch.Generator().manual_seed(SEED)
    write_json(
        "adamw.json",
        {
            "torch": torch.__version__,
            "cases": [
                adamw_case(gen, [1e-3] * 5, (0.9, 0.999), 1e-8, 0.01),
                adamw_case(gen, [5e-2, 4e-2, 3e-2, 2e-2, 1e-2, 0.0], (0.8, 0.95), 1e-6, 0.1),
            ],
        },
    )


def make_schedules():
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    cases = []
    for warmup, total in [(0, 10), (3, 10), (5, 5), (4, 17), (10, 7)]:
        makers = {
            "constant": lambda o: get_constant_schedule_with_warmup(o, warmup),
            "linear": lambda o: get_linear_schedule_with_warmup(o, warmup, total),
            "cosine": lambda o: get_cosine_schedule_with_warmup(o, warmup, total),
        }
        for kind, make in makers.items():
            base_lr = 1.0
            opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
            sched = make(opt)
            multipliers = []
            for _ in range(total + 3):
                multipliers.append(sched.get_last_lr()[0] / base_lr)
                opt.step()
                sched.step()
            cases.append({"kind": kind, "warmup": warmup, "total": total, "multipliers": multipliers})
    write_json("schedules.json", {"cases": cases})


def make_clip():
    gen = torch.Generator().manual_seed(SEED + 1)
    shapes = [[6, 4], [9], [2, 3, 5]]
    cases = []
    for scale, max_norm in [(1.0, 1.0), (0.01, 1.0), (3.0, 0.5)]:
        params = [torch.nn.Parameter(torch.zeros(*s)) for s in shapes]
        grads = [torch.randn(*s, generator=gen) * scale for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm)
        cases.append(
            {
                "max_norm": max_norm,
                "grads": [floats(g) for g in grads],
                "total_norm": float(total.item()),
                "clipped": [floats(p.grad) for p in params],
            }
        )
    write_json("clip.json", {"shapes": shapes, "cases": cases})


def make_kaiming():
    cases = []
    for rank, in_features in [(8, 64), (16, 576), (4, 1536)]:
        rows = 4096 // rank * rank
        w = torch.empty(rows, in_features)
        torch.manual_seed(SEED)
        torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        u = torch.empty(rows, in_features)
        torch.manual_seed(SEED)
        u.uniform_(-1.0, 1.0)
        w64, u64 = w.double(), u.double()
        bound = float((w64 * u64).sum() / (u64 * u64).sum())
        cases.append(
            {
                "in_features": in_features,
                "bound_from_draws": bound,
                "max_abs": float(w.abs().max()),
            }
        )
    write_json("kaiming.json", {"cases": cases})


def make_pcg64():
    cases = []
    for state, inc in [(0x0123456789ABCDEF_FEDCBA9876543210, 0x5851F42D4C957F2D_14057B7EF767814F | 1),
                       (1, 1)]:
        bg = np.random.PCG64()
        bg.state = {"bit_generator": "PCG64", "state": {"state": state, "inc": inc},
                    "has_uint32": 0, "uinteger": 0}
        raw = [int(x) for x in bg.random_raw(16)]
        cases.append({"state": str(state), "inc": str(inc), "raw": [str(x) for x in raw]})
    write_json("pcg64.json", {"numpy": np.__version__, "cases": cases})


def make_tfevents():
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from torch.utils.tensorboard import SummaryWriter

    tmp = Path(tempfile.mkdtemp())
    try:
        writer = SummaryWriter(log_dir=str(tmp))
        scalars = [
            ("train/loss", 2.75, 1, 1700000000.25),
            ("train/lr", 1e-4, 1, 1700000000.25),
            ("train/loss", 1.5, 7, 1700000003.5),
            ("val/loss", -0.0625, 300, 1700000123.125),
            ("train/tokens_per_s", 12345.678, 1 << 40, 1800000000.0),
        ]
        for tag, value, step, wall in scalars:
            writer.add_scalar(tag, value, step, walltime=wall)
        writer.close()
        (event_file,) = list(tmp.glob("events.out.tfevents.*"))
        dest = OUT / "tfevents"
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(event_file, dest / "sample.tfevents")
        events = []
        for ev in LegacyEventFileLoader(str(event_file)).Load():
            if ev.HasField("file_version"):
                events.append({"wall_time": ev.wall_time, "file_version": ev.file_version})
            else:
                (v,) = ev.summary.value
                events.append(
                    {"wall_time": ev.wall_time, "step": ev.step, "tag": v.tag, "value": v.simple_value}
                )
        write_json("tfevents/sample.json", {"events": events})
    finally:
        shutil.rmtree(tmp)


def make_peft():
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    cases = {
        "all7_r8": dict(r=8, lora_alpha=16, lora_dropout=0.05,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                        "gate_proj", "up_proj", "down_proj"]),
        "qv_r4_rslora": dict(r=4, lora_alpha=8, lora_dropout=0.0,
                             target_modules=["q_proj", "v_proj"], use_rslora=True),
    }
    for name, kwargs in cases.items():
        torch.manual_seed(SEED)
        model = MistralForCausalLM(cfg)
        model.name_or_path = "tiny/mistral"
        peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **kwargs))
        tmp = Path(tempfile.mkdtemp())
        try:
            peft_model.save_pretrained(str(tmp))
            dest = OUT / "peft" / name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp / "adapter_config.json", dest / "adapter_config.json")
            with safe_open(str(tmp / "adapter_model.safetensors"), "pt") as f:
                tensors = {k: {"shape": list(f.get_slice(k).get_shape()),
                               "dtype": f.get_slice(k).get_dtype()} for k in f.keys()}
                metadata = f.metadata()
            write_json(f"peft/{name}/tensors.json", {"metadata": metadata, "tensors": tensors})
        finally:
            shutil.rmtree(tmp)


def check_bora_events_readable():
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if shutil.which("cargo") is None:
        print("cargo not found: skipping the tensorboard read-back of bora's events file")
        return
    tmp = Path(tempfile.mkdtemp())
    try:
        subprocess.check_call(
            ["cargo", "test", "-q", "-p", "bora-train", "--test", "reference", "--",
             "--ignored", "--exact", "write_events_for_tensorboard_reader"],
            cwd=ROOT, env={**os.environ, "BORA_TRAIN_EVENTS_OUT": str(tmp)},
        )
        acc = EventAccumulator(str(tmp))
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        f32 = lambda x: float(np.float32(x))  # noqa: E731
        expected = {
            "train/loss": [(s, f32(4.0 / s)) for s in (1, 2, 3)],
            "train/lr": [(s, f32(1e-4 * s)) for s in (1, 2, 3)],
            "train/grad_norm": [(s, f32(0.5 + s)) for s in (1, 2, 3)],
            "train/tokens_per_s": [(s, f32(1000.0 * s)) for s in (1, 2, 3)],
            "val/loss": [(3, 1.25)],
        }
        if scalars != expected:
            raise SystemExit(f"tensorboard read bora's events as {scalars}, expected {expected}")
        print("tensorboard reads bora's events file: ok")
    finally:
        shutil.rmtree(tmp)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    make_adamw()
    make_schedules()
    make_clip()
    make_kaiming()
    make_pcg64()
    make_tfevents()
    make_peft()
    print(f"fixtures written to {OUT.relative_to(ROOT)}")
    check_bora_events_readable()


if __name__ == "__main__":
    main()
