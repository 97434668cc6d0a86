#!/usr/bin/env python3
"""Defaults that work: on tasks bora does not ship, does `bora train` with no hyperparameters
come close to the best of a hand learning-rate sweep, and in how much time?

Three seeded task generators (none is bora's demo task):

  classify  ticket routing: the prompt lists the classes, the answer is one word
  extract   a sentence about a person to JSON {"name", "age", "city"}
  convert   a date in words to ISO 8601 ("the 5th of March 2021" -> "2021-03-05")

For each task and size, the training file (SIZE examples) and a test file (TEST examples,
drawn from another seed) are written, and these runs are made, each followed by
`bora eval --run RUN --data test.jsonl --metric M --json` on the test file:

  base     the base model alone (`bora eval --model`)
  fixed    the fixed defaults bora had before: lr 1e-4, one epoch, no warm-up, batch 4,
           no validation split
  defaults no hyperparameter flags at all
  auto     `--auto`: range test for the lr, early stopping on validation loss
  lr=X     the defaults with only --lr X, for each X of --sweep (a rate equal to the one the
           defaults chose is the defaults run itself: the same config)

The score is on the test file (the metric as `bora eval` computes it); the time is the wall
time of `bora train`, measured here, with `--heldout 0` so every condition's time is training
alone. Every run uses `--seq-len` (default 128, enough for every example of these tasks) so
the comparison fits a small machine.

Each run also records its last validation loss and last training loss (read from the run's
metrics.jsonl) and the load average before and after it. `--model tiny-mistral` trains a
1-layer Mistral with random weights and the Tekken tokenizer (the one the `bora serve` test
writes, from `scripts/test_serve_openai.py`): it scores about 0 whatever it is taught, so its
losses are the comparison.

Run from the repo root after `cargo build --release -p bora`:

    python3 bench/defaults.py [--tasks classify,extract,convert] [--sizes 200,1000,5000]
        [--model PATH|tiny-mistral] [--sweep 3e-4,1e-3,3e-3] [--out bench-defaults]
        [--seq-len 128] [--conditions base,fixed,defaults,auto,sweep]

It prints a Markdown table and writes OUT/results.json. A second call with the same OUT keeps
the results already there and makes only the runs that are missing, so a long comparison can
be made in parts.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BORA = Path(os.environ.get("BORA_BIN", ROOT / "target" / "release" / "bora"))
DEFAULT_MODEL = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora")) / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEST = 60

CLASSES = {
    "billing": ["I was charged twice for {x}", "my invoice for {x} shows the wrong amount",
                "why did my card get billed for {x}", "the price of {x} on my bill is too high"],
    "outage": ["{x} is down since this morning", "I cannot reach {x} at all",
               "{x} times out for everyone in our office", "{x} stopped responding an hour ago"],
    "account": ["I forgot the password for {x}", "please change the email on my {x} login",
                "how do I add a user to {x}", "lock my {x} account, I think it was hacked"],
    "refund": ["I want my money back for {x}", "please refund the {x} order",
               "I returned {x} last week, where is my refund", "cancel {x} and refund me"],
    "shipping": ["where is my {x} package", "the {x} parcel arrived damaged",
                 "tracking for {x} has not moved in days", "can you ship {x} to my new address"],
}
THINGS = ["the premium plan", "the router", "the mobile app", "the dashboard", "my laptop order",
          "the API", "the family bundle", "the gift card", "the storage add-on", "the headset"]
FIRST = ["Maria", "John", "Aiko", "Lucas", "Fatima", "Olga", "Pedro", "Chen", "Amara", "Noah",
         "Ingrid", "Ravi", "Sofia", "Tomas", "Leila", "Yusuf"]
LAST = ["Lopez", "Smith", "Tanaka", "Martin", "Haddad", "Ivanova", "Costa", "Wang", "Okafor",
        "Berg", "Patel", "Rossi", "Novak", "Karimi", "Demir", "Moreau"]
CITIES = ["Lyon", "Osaka", "Toronto", "Nairobi", "Lisbon", "Krakow", "Austin", "Porto",
          "Seoul", "Bergen", "Pune", "Turin", "Quito", "Tunis", "Leeds", "Perth"]
EXTRACT = ["{n}, {a}, moved to {c} last spring.", "Meet {n} from {c}; {a} years old.",
           "{c} resident {n} turned {a} this year.", "At {a}, {n} still lives in {c}.",
           "{n} ({a}) works in {c}."]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


def ordinal(d):
    suffix = "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def classify(rng):
    label = rng.choice(sorted(CLASSES))
    text = rng.choice(CLASSES[label]).format(x=rng.choice(THINGS))
    text += rng.choice([f" (order {rng.randint(1000, 99999)})", f", {rng.choice(FIRST)}", ""])
    prompt = (f"Route this support ticket to one team: {', '.join(sorted(CLASSES))}. "
              f"Answer with the team name only.\nTicket: {text}")
    return prompt, label


def extract(rng):
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age, city = rng.randint(18, 90), rng.choice(CITIES)
    text = rng.choice(EXTRACT).format(n=name, a=age, c=city)
    prompt = f"Extract the person as JSON with keys name, age, city.\n{text}"
    return prompt, json.dumps({"name": name, "age": age, "city": city})


def convert(rng):
    y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    words = rng.choice([f"{MONTHS[m - 1]} {d}, {y}", f"the {ordinal(d)} of {MONTHS[m - 1]} {y}",
                        f"{d} {MONTHS[m - 1]} {y}", f"{MONTHS[m - 1][:3]}. {ordinal(d)}, {y}"])
    return f"Write this date as YYYY-MM-DD: {words}", f"{y:04d}-{m:02d}-{d:02d}"


TASKS = {
    "classify": (classify, "choice:" + ",".join(sorted(CLASSES))),
    "extract": (extract, "json"),
    "convert": (convert, "exact"),
}


def write(path, make, n, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            prompt, answer = make(rng)
            f.write(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": answer}]}) + "\n")


def bora(args, log):
    started = time.monotonic()
    with open(log, "w") as f:
        done = subprocess.run([str(BORA), *args], stdout=subprocess.PIPE, stderr=f, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"bora {' '.join(args)} failed; see {log}")
    return done.stdout, seconds


def evaluate(where, test, metric, log):
    tokens = "48" if metric == "json" else "16"
    out, _ = bora(["eval", *where, "--data", str(test), "--metric", metric, "--json",
                   "--max-tokens", tokens], log)
    result = json.loads(out.strip().splitlines()[-1])
    side = result.get("tuned") or result["base"]
    return side["score"], result["base"]["score"]


def last_losses(run):
    """The run's last training loss and last validation loss (None when it had no validation)."""
    train, val = None, None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        train = m.get("loss", train)
        val = m.get("val_loss", val)
    return train, val


def tiny_mistral(out):
    """The `bora serve` test's tiny random Mistral, written once under OUT."""
    directory = out / "tiny-mistral"
    if not (directory / "model.safetensors").is_file():
        sys.path.insert(0, str(ROOT / "scripts"))
        from test_serve_openai import write_tiny_mistral
        write_tiny_mistral(directory)
    return str(directory)


def load():
    return round(os.getloadavg()[0], 1)


def lr_of(run):
    for line in (run / "config.toml").read_text().splitlines():
        if line.startswith("lr = "):
            return float(line.split("=")[1])
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="classify,extract,convert")
    p.add_argument("--sizes", default="200,1000,5000")
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--sweep", default="3e-4,1e-3,3e-3")
    p.add_argument("--conditions", default="base,fixed,defaults,auto,sweep")
    p.add_argument("--seq-len", default="128")
    p.add_argument("--out", default="bench-defaults")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = tiny_mistral(out) if a.model == "tiny-mistral" else a.model
    model_name = a.model if a.model == "tiny-mistral" else Path(a.model).name
    conditions = a.conditions.split(",")
    common = ["--model", model, "--seq-len", a.seq_len, "--heldout", "0"]
    fixed = ["--lr", "1e-4", "--epochs", "1", "--warmup-steps", "0", "--batch-size", "4",
             "--grad-accum", "1", "--val-fraction", "0", "--eval-every", "100"]
    runs = [("fixed", fixed), ("defaults", []), ("auto", ["--auto"])]
    if "sweep" in conditions:
        runs += [(f"lr={lr}", ["--lr", lr]) for lr in a.sweep.split(",")]
    saved = out / "results.json"
    results = json.loads(saved.read_text()) if saved.is_file() else []
    for task in a.tasks.split(","):
        make, metric = TASKS[task]
        for size in map(int, a.sizes.split(",")):
            d = out / f"{model_name}-{task}-{size}"
            d.mkdir(exist_ok=True)
            train, test = d / "train.jsonl", d / "test.jsonl"
            write(train, make, size, seed=size)
            write(test, make, TEST, seed=10_000_000 + size)
            row = next((r for r in results if (r["model"], r["task"], r["size"]) ==
                        (model_name, task, size)), None)
            if row is None:
                row = {"model": model_name, "task": task, "size": size, "metric": metric}
                results.append(row)
            if "base" in conditions and "base" not in row:
                row["base"], _ = evaluate(["--model", model, "--out", str(d / "base-eval")],
                                          test, metric, d / "base-eval.log")
            for name, flags in runs:
                if name in row or (name not in conditions and not name.startswith("lr=")):
                    continue
                chosen = row.get("defaults")
                if name.startswith("lr=") and chosen and float(flags[1]) == chosen["lr"]:
                    # The same config as the defaults run, so the same adapter: reuse it.
                    row[name] = chosen
                    continue
                run = d / name.replace("=", "")
                load_before = load()
                _, seconds = bora(["train", "--data", str(train), "--out", str(run), *common,
                                   *flags], d / f"{run.name}.log")
                load_after = load()
                score, _ = evaluate(["--run", str(run)], test, metric, d / f"{run.name}-eval.log")
                steps = json.loads((run / "timing.json").read_text())["steps"]
                train_loss, val_loss = last_losses(run)
                row[name] = {"score": score, "seconds": round(seconds, 1), "steps": steps,
                             "lr": lr_of(run), "train_loss": train_loss, "val_loss": val_loss,
                             "load": [load_before, load_after]}
                print(f"{model_name} {task} {size} {name}: {100 * score:.0f}% in "
                      f"{seconds:.0f}s ({steps} steps, lr {lr_of(run)}, loss {train_loss}, "
                      f"val {val_loss}, load {load_before}->{load_after})",
                      file=sys.stderr, flush=True)
                saved.write_text(json.dumps(results, indent=1) + "\n")
            saved.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


def table(results):
    lines = ["| model | task | n | base | fixed defaults | defaults | auto | best sweep |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(r):
        if not r:
            return "–"
        loss = f", loss {r['train_loss']:.3g}" if r.get("train_loss") is not None else ""
        loss += f", val {r['val_loss']:.3g}" if r.get("val_loss") is not None else ""
        return (f"{100 * r['score']:.0f}% ({r['seconds']:.0f} s, {r['steps']} steps, "
                f"lr {r['lr']:.1e}{loss})")

    for row in results:
        sweep = [v for k, v in row.items() if k.startswith("lr=")]
        # The best score; among equal scores (a random model's 0%) the lowest held-out loss.
        held_out_loss = lambda r: r["val_loss"] if r.get("val_loss") is not None else float("inf")
        best = max(sweep, key=lambda r: (r["score"], -held_out_loss(r))) if sweep else None
        base = f"{100 * row['base']:.0f}%" if "base" in row else "–"
        lines.append(f"| {row['model']} | {row['task']} | {row['size']} | {base} | "
                     f"{cell(row.get('fixed'))} | {cell(row.get('defaults'))} | "
                     f"{cell(row.get('auto'))} | {cell(best)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
