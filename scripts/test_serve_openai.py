#!/usr/bin/env python3
"""End-to-end test of `bora serve` with the real `openai` and `mistralai` Python clients.

Run with any Python 3: the script creates `.venv-serve` at the repository root on first use
(pinned `openai` and `mistralai`), re-runs itself inside it, starts `bora serve` on a loopback
port with the default model and two small PEFT adapters it writes itself, and checks:

- /v1/models, chat and text completions, streamed and not (streamed deltas joined equal the
  non-streamed greedy answer);
- OpenAI error objects and statuses for malformed JSON (400), an unknown model (404), an
  oversized prompt (400 context_length_exceeded), a wrong API key (401) and a 20 MB body
  sent whole by `http.client` (413, received rather than a broken pipe);
- two adapters on one base answer differently;
- structured outputs: a JSON-schema answer the client parses into a pydantic model, a
  `json_object` answer, a 400 naming an unsupported schema keyword; log-probabilities (chat and
  completions), `n` > 1 with a seed, usage in streams; SmolLM2's template has no tools: 400;
- SIGTERM while a response is streaming: the stream still finishes and the server exits 0.

Then it serves a tiny random Mistral model with the Tekken tokenizer (written here; the
tokenizer file comes from `scripts/fetch-tokenizers.sh`) and checks tool calls with both
clients (arguments streamed in pieces, joined by the openai client's own stream accumulation): `tool_choice` required/any, a named function (arguments validated against its
parameters by pydantic), none and auto, streamed tool calls equal to the whole answer, and a
follow-up turn with the tool result. A random model never calls a tool on its own, so the
calls come from constrained decoding of the model's own logits: the parser reads real
generated tokens. On the same server, an adapter that `bora train` teaches the tiny model
(about half a minute of CPU) from the tool-call conversations of
`crates/bora-serve/tests/fixtures/tool_use_train.jsonl` (mistral-common's shape) is served as
`tools`: with tool_choice auto the model itself calls the trained tool, with the trained
arguments and id, in exactly the tokens mistral-common encodes for that call (the served
logprob tokens equal the fixture `tool_calls.json`'s), read back as mistral-common decodes them;
it answers in text where it was trained to, also after a tool result; named, required/any,
none, the openai client's stream accumulation and the mistralai client (whole and streamed)
give the trained call.

Last it serves the default model with a Hermes-style chat template (`--chat-template`, the
template of the rendering fixture) and checks tool calls read back from `<tool_call>` text:
`required` with two tools (each call's arguments validate against the schema of the tool it
names), a named tool, its stream accumulated by the openai client, `none`, a tool result turn
and the mistralai client's stream.

The binary is `$BORA_BIN`, else `target/release/bora`, else `target/debug/bora`; the model is
`${BORA_HOME:-$HOME/.cache/bora}/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
Exit status 0 when every check passes.
"""

import http.client
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-serve"
KEY = "test-key"
BASE = "smollm2"
# SmolLM2-135M: 30 layers, hidden size 576 (q_proj is 576 -> 576).
LAYERS, HIDDEN = 30, 576


PACKAGES = ["openai==3.63.0", "mistralai==3.8.0"]
MARKER = VENV / "bora-packages.txt"


def ensure_venv():
    """Re-executes this script inside .venv-serve, creating or completing it if needed."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not python.exists():
        print(f"creating {VENV}", flush=True)
        venv.create(VENV, with_pip=True)
    wanted = "\n".join(PACKAGES)
    if not MARKER.exists() or MARKER.read_text() != wanted:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        MARKER.write_text(wanted)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def bora_bin():
    if os.environ.get("BORA_BIN"):
        return Path(os.environ["BORA_BIN"])
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / "bora"
        if p.exists():
            return p
    sys.exit("no bora binary: build it with `cargo build --release -p bora` or set BORA_BIN")


def default_model():
    home = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora"))
    path = home / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        sys.exit(f"{path} is missing: run scripts/fetch-default-model.sh")
    return path


def write_adapter(directory, seed, rank=4):
    """A PEFT LoRA adapter on q_proj with uniform noise (safetensors written by hand, so the
    venv needs nothing but openai)."""
    directory.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    rng = random.Random(seed)
    header, blobs, offset = {}, [], 0
    for layer in range(LAYERS):
        prefix = f"base_model.model.model.layers.{layer}.self_attn.q_proj"
        for part, shape in (("lora_A", [rank, HIDDEN]), ("lora_B", [HIDDEN, rank])):
            n = shape[0] * shape[1]
            blob = struct.pack(f"<{n}f", *(rng.uniform(-1.0, 1.0) for _ in range(n)))
            header[f"{prefix}.{part}.weight"] = {
                "dtype": "F32",
                "shape": shape,
                "data_offsets": [offset, offset + len(blob)],
            }
            blobs.append(blob)
            offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(directory / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_post(base_url, path, body, key=KEY):
    """POSTs raw bytes; returns (status, parsed JSON body)."""
    req = urllib.request.Request(
        base_url + path,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


FAILURES = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + str(detail)}", flush=True)
    if not ok:
        FAILURES.append(name)


def error_object(body):
    e = body.get("error", {}) if isinstance(body, dict) else {}
    return isinstance(e.get("message"), str) and "type" in e and "param" in e and "code" in e


def main():
    ensure_venv()
    import openai

    work = Path(tempfile.mkdtemp(prefix="bora-serve-test-"))
    write_adapter(work / "a", seed=1)
    write_adapter(work / "b", seed=2)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    cmd = [
        str(bora_bin()), "serve", "--model", str(default_model()), "--name", BASE,
        "--port", str(port), "--api-key", KEY, "--context", "1024",
        "--adapter", f"a={work / 'a'}", "--adapter", f"b={work / 'b'}",
    ]
    server = subprocess.Popen(cmd)
    try:
        wait_healthy(base_url, server)
        run_checks(openai, base_url, server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    mistral_dir = work / "tiny-mistral"
    write_tiny_mistral(mistral_dir)
    adapter = train_tool_adapter(mistral_dir, work / "runs" / "tools")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([
        str(bora_bin()), "serve", "--model", str(mistral_dir), "--name", "tiny",
        "--port", str(port), "--api-key", KEY, "--context", "1024", "--adapter", f"tools={adapter}",
    ])
    try:
        wait_healthy(base_url, server)
        tool_checks(openai, base_url)
        trained_tool_checks(openai, base_url)
    finally:
        server.kill()
        server.wait()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([
        str(bora_bin()), "serve", "--model", str(default_model()), "--name", "hermes",
        "--port", str(port), "--api-key", KEY, "--context", "2048", "--chat-template", str(HERMES_TEMPLATE),
    ])
    try:
        wait_healthy(base_url, server)
        hermes_checks(openai, base_url)
    finally:
        server.kill()
        server.wait()
    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
    print("all checks passed")


def wait_healthy(base_url, server):
    for _ in range(600):
        try:
            urllib.request.urlopen(base_url + "/health").read()
            return
        except OSError:
            if server.poll() is not None:
                sys.exit(f"bora serve exited with {server.returncode}")
            time.sleep(0.1)
    sys.exit("bora serve did not become healthy")


def write_tiny_mistral(directory):
    """A 2-layer Mistral with random weights and the Tekken 240718 tokenizer (131072 tokens),
    as an HF directory: config.json, model.safetensors (written by hand), tekken.json.

    Small enough to write and train in seconds, shaped so that a LoRA adapter can teach it
    exact answers: every embedding and output row is distinct (each weight matrix is a window
    sliding over one block of random values whose length, a prime above the vocabulary size,
    never repeats a row), and the final norm's weight of 8 widens the logits' range so that a
    trained token can take nearly all the probability among 131072."""
    home = Path(os.environ.get("BORA_HOME", Path.home() / ".cache" / "bora"))
    tekken = home / "tokenizers" / "tekken_240718.json"
    if not tekken.is_file():
        sys.exit(f"{tekken} is missing: run scripts/fetch-tokenizers.sh")
    directory.mkdir(parents=True)
    (directory / "tekken.json").write_bytes(tekken.read_bytes())
    vocab, hidden, inter, heads, kv, head_dim, layers = 131072, 64, 128, 4, 2, 16, 2
    config = {
        "architectures": ["MistralForCausalLM"], "model_type": "mistral", "bos_token_id": 1,
        "eos_token_id": 2, "head_dim": head_dim, "hidden_act": "silu", "hidden_size": hidden,
        "intermediate_size": inter, "max_position_embeddings": 4096,
        "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "vocab_size": vocab,
    }
    (directory / "config.json").write_text(json.dumps(config))
    shapes = {
        "model.embed_tokens.weight": [vocab, hidden], "lm_head.weight": [vocab, hidden],
        "model.norm.weight": [hidden],
    }
    for layer in range(layers):
        p = f"model.layers.{layer}."
        shapes.update({
            p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden],
            p + "self_attn.q_proj.weight": [heads * head_dim, hidden],
            p + "self_attn.k_proj.weight": [kv * head_dim, hidden],
            p + "self_attn.v_proj.weight": [kv * head_dim, hidden],
            p + "self_attn.o_proj.weight": [hidden, heads * head_dim],
            p + "mlp.gate_proj.weight": [inter, hidden], p + "mlp.up_proj.weight": [inter, hidden],
            p + "mlp.down_proj.weight": [hidden, inter],
        })
    rng = random.Random(5)
    block_len = 131101  # a prime above the vocabulary size
    block = [rng.uniform(-1.0, 1.0) for _ in range(block_len)]
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        n = shape[0] * (shape[1] if len(shape) > 1 else 1)
        if len(shape) == 1:
            blob = struct.pack(f"<{n}f", *[8.0 if name == "model.norm.weight" else 1.0] * n)
        else:
            scale = 1.0 / shape[1] ** 0.5
            window = struct.pack(f"<{block_len}f", *(v * scale for v in block))
            blob = (window * (n // block_len + 1))[: 4 * n]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(directory / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


FIXTURES = ROOT / "crates" / "bora-serve" / "tests" / "fixtures"
# Conversations in mistral-common's tool-call shape: calls of two tools, a plain answer, and a
# tool result answered in text. The tiny model learns them with `bora train`.
TOOL_DATA = FIXTURES / "tool_use_train.jsonl"
# mistral-common's encodings and decodings of the same calls (scripts/make_toolcall_fixtures.py).
TOOL_CALLS_FIXTURE = FIXTURES / "tool_calls.json"
# Seconds to a minute of CPU; the loss then ends near 0.003.
TRAIN_FLAGS = [
    "--val-fraction", "0", "--heldout", "0", "--max-steps", "150", "--batch-size", "4",
    "--seq-len", "512", "--lr", "1e-2", "--rank", "16", "--alpha", "32", "--warmup-steps", "10",
    "--seed", "1", "--checkpoint-every", "150",
]
TRAINED_LOSS = 0.05


def train_tool_adapter(model_dir, run_dir):
    """Trains a LoRA adapter on TOOL_DATA with `bora train`; returns its directory."""
    started = time.monotonic()
    subprocess.run(
        [str(bora_bin()), "train", "--model", str(model_dir), "--data", str(TOOL_DATA),
         "--out", str(run_dir), *TRAIN_FLAGS],
        check=True, stdout=subprocess.DEVNULL,
    )
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    check(
        f"bora train on the tool-use set: final loss below {TRAINED_LOSS} "
        f"({last.get('loss')}, {time.monotonic() - started:.0f} s)",
        last.get("step") == 150 and last.get("loss", 1.0) < TRAINED_LOSS,
        last,
    )
    return run_dir / "adapter"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Lyon", "Nice"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}


HERMES_TEMPLATE = ROOT / "crates" / "bora-tokenizer" / "tests" / "fixtures" / "chat" / "hermes_tools.jinja"


def accumulate_stream(client, **request):
    """The openai client's own stream accumulation (`chat.completions.stream`), and how many
    chunks carried a piece of some call's arguments."""
    fragments = 0
    with client.chat.completions.stream(**request) as stream:
        for event in stream:
            if event.type == "chunk":
                for choice in event.chunk.choices:
                    for d in choice.delta.tool_calls or []:
                        if d.function and d.function.arguments:
                            fragments += 1
        final = stream.get_final_completion()
    return final, fragments


def mistral_stream_calls(m, **request):
    """Calls joined from the mistralai client's stream: {index: {name, arguments}}, and the
    finish reason."""
    parts, finish = {}, None
    for ev in m.chat.stream(**request):
        choice = ev.data.choices[0]
        finish = choice.finish_reason or finish
        for d in choice.delta.tool_calls or []:
            entry = parts.setdefault(d.index or 0, {"name": "", "arguments": ""})
            entry["name"] += d.function.name or ""
            args = d.function.arguments
            entry["arguments"] += args if isinstance(args, str) else json.dumps(args)
    return parts, finish


def hermes_checks(openai, base_url):
    """SmolLM2 with a Hermes-style template (`--chat-template`): tools rendered into the prompt
    by the template, calls read back from `<tool_call>` text, one schema per tool."""
    import pydantic
    from typing import Literal, Optional

    class WeatherArgs(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        city: Literal["Paris", "Lyon", "Nice"]
        unit: Literal["celsius", "fahrenheit"]
        days: Optional[int] = None

    class AddArgs(pydantic.BaseModel):
        a: float
        b: float

    schemas = {"get_weather": WeatherArgs, "add": AddArgs}
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Paris? Then add 2 and 3."}]
    common = {"model": "hermes", "messages": messages, "tools": [WEATHER, ADD], "max_tokens": 120, "seed": 1}
    names = set()
    ok = True
    for seed in range(6):
        r = client.chat.completions.create(tool_choice="required", temperature=1.0, **{**common, "seed": seed})
        c = r.choices[0]
        calls = c.message.tool_calls or []
        try:
            ok &= c.finish_reason == "tool_calls" and len(calls) == 1 and calls[0].id.startswith("call_")
            schemas[calls[0].function.name].model_validate_json(calls[0].function.arguments)
            names.add(calls[0].function.name)
        except (pydantic.ValidationError, KeyError, IndexError) as e:
            ok = False
            r = (r, e)
        if not ok:
            break
    check("hermes: tool_choice=required, two tools: each call's arguments validate against the named tool's schema", ok, r)
    check("hermes: sampled calls name both tools (the name picks the schema)", names == {"get_weather", "add"}, names)

    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(tool_choice=named, temperature=0, **common)
    calls = whole.choices[0].message.tool_calls or []
    check(
        "hermes: a named tool gives one call to it",
        len(calls) == 1 and calls[0].function.name == "get_weather" and whole.choices[0].finish_reason == "tool_calls",
        whole,
    )
    final, fragments = accumulate_stream(client, tool_choice=named, temperature=0, **common)
    got = [(t.id, t.function.name, t.function.arguments) for t in final.choices[0].message.tool_calls or []]
    want = [(t.id, t.function.name, t.function.arguments) for t in calls]
    check(
        "hermes: the openai client's stream accumulation gives the whole answer's calls",
        got == want and final.choices[0].finish_reason == "tool_calls",
        (got, want),
    )
    check("hermes: arguments arrive in several pieces", fragments > 3, fragments)

    follow = messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0].id, "type": "function", "function": {"name": "get_weather", "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 21}'},
    ]
    r = client.chat.completions.create(model="hermes", messages=follow, tools=[WEATHER, ADD], max_tokens=8, temperature=0)
    check("hermes: a tool result turn is rendered and answered", r.choices[0].message.role == "assistant", r)
    r = client.chat.completions.create(tool_choice="none", temperature=0, **common)
    check("hermes: tool_choice=none gives no tool calls", not r.choices[0].message.tool_calls, r)

    from mistralai.client import Mistral

    m = Mistral(api_key=KEY, server_url=base_url)
    parts, finish = mistral_stream_calls(
        m, model="hermes", messages=messages, tools=[WEATHER, ADD], tool_choice="any", temperature=0, max_tokens=120
    )
    check(
        "hermes: the mistralai client reads the streamed call pieces",
        finish == "tool_calls" and parts and all(p["name"] in schemas and json.loads(p["arguments"]) is not None for p in parts.values()),
        (parts, finish),
    )


def is_mistral_id(i):
    return isinstance(i, str) and len(i) == 9 and i.isascii() and i.isalnum()


def tool_checks(openai, base_url):
    import pydantic
    from typing import Literal, Optional

    class WeatherArgs(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        city: Literal["Paris", "Lyon", "Nice"]
        unit: Literal["celsius", "fahrenheit"]
        days: Optional[int] = None

    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    # Closed parameter schemas (enums, integers): a random model's arguments then end.
    common = {"model": "tiny", "messages": messages, "tools": [WEATHER, ADD], "temperature": 0, "max_tokens": 120, "seed": 3}
    r = client.chat.completions.create(**{**common, "tools": [WEATHER]}, tool_choice="required", parallel_tool_calls=False)
    c = r.choices[0]
    calls = c.message.tool_calls or []
    check(
        "openai: tool_choice=required gives tool_calls with finish_reason tool_calls",
        c.finish_reason == "tool_calls" and len(calls) >= 1
        and all(t.function.name == "get_weather" and isinstance(json.loads(t.function.arguments), dict) for t in calls),
        r,
    )
    check("openai: call ids have Mistral's shape", all(is_mistral_id(t.id) for t in calls), calls)

    named = {"type": "function", "function": {"name": "get_weather"}}
    r = client.chat.completions.create(tool_choice=named, **common)
    calls = r.choices[0].message.tool_calls or []
    try:
        ok = len(calls) == 1 and calls[0].function.name == "get_weather"
        WeatherArgs.model_validate_json(calls[0].function.arguments)
    except (pydantic.ValidationError, IndexError) as e:
        ok = False
        r = (r, e)
    check("openai: a named tool's arguments validate against its parameters (pydantic)", ok, r)

    chunks = list(client.chat.completions.create(tool_choice=named, stream=True, **common))
    streamed = {}
    finish = None
    for ch in chunks:
        for choice in ch.choices:
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = streamed.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = d.id or entry["id"]
                if d.function:
                    entry["name"] += d.function.name or ""
                    entry["arguments"] += d.function.arguments or ""
    whole = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in calls]
    check(
        "openai: streamed tool calls join to the whole answer",
        [streamed[k] for k in sorted(streamed)] == whole and finish == "tool_calls",
        (streamed, whole, finish),
    )

    # The random model writes `arguments` before `name`, so its arguments follow the name in
    # one piece; the trained adapter's stream (trained_tool_checks) has them in pieces.
    final, _ = accumulate_stream(client, tool_choice=named, **common)
    got = [{"id": t.id, "name": t.function.name, "arguments": t.function.arguments} for t in final.choices[0].message.tool_calls or []]
    check("openai: the client's stream accumulation gives the whole answer", got == whole, (got, whole))

    r = client.chat.completions.create(tool_choice="none", **common)
    check("openai: tool_choice=none gives no tool calls", not r.choices[0].message.tool_calls, r)
    r = client.chat.completions.create(**common)
    check("openai: tool_choice auto answers", r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r)

    follow = messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": whole[0]["id"], "type": "function",
             "function": {"name": "get_weather", "arguments": whole[0]["arguments"]}}]},
        {"role": "tool", "tool_call_id": whole[0]["id"], "content": '{"temperature": 21}'},
    ]
    r = client.chat.completions.create(model="tiny", messages=follow, tools=[WEATHER], max_tokens=8, temperature=0)
    check("openai: a tool result turn is rendered and answered", r.choices[0].message.role == "assistant", r)

    try:
        client.chat.completions.create(tool_choice={"type": "function", "function": {"name": "nope"}}, **common)
        check("unknown named tool: 400", False, "no error")
    except openai.BadRequestError as e:
        check("unknown named tool: 400 naming tool_choice", e.body.get("param") == "tool_choice", e.body)

    from mistralai.client import Mistral

    m = Mistral(api_key=KEY, server_url=base_url)
    r = m.chat.complete(model="tiny", messages=messages, tools=[WEATHER], tool_choice="any", parallel_tool_calls=False, temperature=0, max_tokens=120)
    calls = r.choices[0].message.tool_calls or []
    check(
        "mistralai: tool_choice=any gives tool calls",
        r.choices[0].finish_reason == "tool_calls" and len(calls) >= 1 and all(is_mistral_id(t.id) for t in calls),
        r,
    )
    parts, finish = mistral_stream_calls(
        m, model="tiny", messages=messages, tools=[WEATHER], tool_choice="any", parallel_tool_calls=False,
        temperature=0, max_tokens=120,
    )
    check(
        "mistralai: streamed tool call parses",
        finish == "tool_calls" and all(json.loads(p["arguments"]) is not None for p in parts.values()) and parts,
        (parts, finish),
    )


def trained_tool_checks(openai, base_url):
    """The tiny Mistral with the adapter trained on TOOL_DATA (`tools`): with tool_choice auto
    the model itself calls the trained tool with the trained arguments and id, or answers in
    text where it was trained to; its tokens are those mistral-common encodes for the call, and
    the call read back is mistral-common's decoding of them. Named, required/any, streamed and
    the mistralai client give the same call; the tool result turn gives the trained answer."""
    examples = [json.loads(line) for line in TOOL_DATA.read_text().splitlines()]
    tools = examples[0]["tools"]
    fixture = json.loads(TOOL_CALLS_FIXTURE.read_text())
    encoded = {
        case["calls"][0]["id"]: case
        for case in fixture["cases"]
        if case["tokenizer"] == "tekken_240718.json" and "pieces" in case
    }
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    greedy = {"model": "tools", "tools": tools, "temperature": 0, "max_tokens": 80}

    def parsed(calls):
        return [(c.function.name, json.loads(c.function.arguments)) for c in calls or []]

    def trained(message):
        return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls", [])]

    for k, example in enumerate(examples):
        prompt, answer = example["messages"][:-1], example["messages"][-1]
        r = client.chat.completions.create(messages=prompt, logprobs=True, **greedy)
        c = r.choices[0]
        if answer.get("tool_calls"):
            want_id = answer["tool_calls"][0]["id"]
            case = encoded.get(want_id, {})
            check(
                f"trained {k}: tool_choice auto, the model calls the trained tool with the trained arguments and id",
                c.finish_reason == "tool_calls" and parsed(c.message.tool_calls) == trained(answer)
                and [t.id for t in c.message.tool_calls] == [want_id],
                r,
            )
            check(
                f"trained {k}: the tokens are mistral-common's encoding of the call, read back as mistral-common decodes them",
                [t.bytes for t in c.logprobs.content] == case.get("pieces")
                and [(t.id, t.function.name, json.loads(t.function.arguments)) for t in c.message.tool_calls]
                == [(d["id"], d["name"], d["arguments"]) for d in case.get("calls", [])],
                (r, case),
            )
        else:
            check(
                f"trained {k}: tool_choice auto, the model answers in text where it was trained to",
                c.finish_reason == "stop" and not c.message.tool_calls and c.message.content == answer["content"],
                r,
            )

    prompt, answer = examples[0]["messages"][:-1], examples[0]["messages"][-1]
    want = trained(answer)
    named = {"type": "function", "function": {"name": want[0][0]}}
    r = client.chat.completions.create(messages=prompt, tool_choice=named, **greedy)
    check("trained: a named tool gives the trained call", parsed(r.choices[0].message.tool_calls) == want, r)
    r = client.chat.completions.create(messages=prompt, tool_choice="required", parallel_tool_calls=False, **greedy)
    check("trained: tool_choice=required gives the trained call", parsed(r.choices[0].message.tool_calls) == want, r)
    r = client.chat.completions.create(messages=prompt, tool_choice="none", **greedy)
    check("trained: tool_choice=none gives no tool calls", not r.choices[0].message.tool_calls, r)
    r = client.chat.completions.create(messages=prompt, **{**greedy, "model": "tiny"})
    check("trained: the base model without the adapter does not make the call", parsed(r.choices[0].message.tool_calls) != want, r)
    final, fragments = accumulate_stream(client, messages=prompt, **greedy)
    f = final.choices[0]
    check(
        "trained: streamed (openai stream accumulation), the trained call, arguments in pieces",
        f.finish_reason == "tool_calls" and parsed(f.message.tool_calls) == want and fragments > 1,
        (final, fragments),
    )

    from mistralai.client import Mistral

    m = Mistral(api_key=KEY, server_url=base_url)
    sent = {"model": "tools", "tools": tools, "temperature": 0, "max_tokens": 80}
    for choice in ("auto", "any"):
        r = m.chat.complete(messages=prompt, tool_choice=choice, parallel_tool_calls=False, **sent)
        got = [(t.function.name, json.loads(t.function.arguments)) for t in r.choices[0].message.tool_calls or []]
        check(f"trained, mistralai: tool_choice={choice} gives the trained call", got == want, r)
    parts, finish = mistral_stream_calls(m, messages=prompt, **sent)
    got = [(p["name"], json.loads(p["arguments"])) for _, p in sorted(parts.items())]
    check("trained, mistralai: the streamed call is the trained one", finish == "tool_calls" and got == want, (parts, finish))
    follow = next(e["messages"] for e in examples if e["messages"][-2]["role"] == "tool")
    r = m.chat.complete(messages=follow[:-1], **sent)
    check(
        "trained, mistralai: the tool result turn gets the trained answer",
        r.choices[0].message.content == follow[-1]["content"] and not r.choices[0].message.tool_calls,
        r,
    )


def structured_checks(openai, client):
    import pydantic
    from typing import Literal

    class Capital(pydantic.BaseModel):
        city: str
        continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]
        is_capital: bool

    messages = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    r = client.chat.completions.parse(model=BASE, messages=messages, response_format=Capital, temperature=0, max_tokens=80)
    parsed = r.choices[0].message.parsed
    check("json_schema: the client parses the answer into the pydantic model", isinstance(parsed, Capital), r)
    r = client.chat.completions.create(
        model=BASE, messages=messages, response_format={"type": "json_object"}, temperature=0, max_tokens=80
    )
    try:
        ok = isinstance(json.loads(r.choices[0].message.content), dict)
    except json.JSONDecodeError:
        ok = False
    check("json_object: the answer is a JSON object", ok, r)
    try:
        client.chat.completions.create(
            model=BASE, messages=messages, max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(?=a)a+"}}},
        )
        check("unsupported pattern: 400", False, "no error")
    except openai.BadRequestError as e:
        check(
            "unsupported pattern (look-ahead): 400 naming the keyword",
            e.body.get("param") == "response_format" and "pattern" in e.body.get("message", ""),
            e.body,
        )
    code = {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        "when": {"type": "string", "format": "date"},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5},
        "name": {"type": "string", "minLength": 2, "maxLength": 8},
    }, "required": ["code", "when", "rating", "name"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=BASE, messages=messages, temperature=1.0, seed=5, max_tokens=80, n=4,
        response_format={"type": "json_schema", "json_schema": {"name": "code", "schema": code}},
    )
    import re

    def keyword_valid(text):
        try:
            v = json.loads(text)
            return (
                re.fullmatch(r"[A-Z]{3}-[0-9]{2}", v["code"]) is not None
                # format: date, as bora enforces it (field ranges, not days per month).
                and re.fullmatch(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])", v["when"]) is not None
                and isinstance(v["rating"], int) and 1 <= v["rating"] <= 5
                and 2 <= len(v["name"]) <= 8
            )
        except (ValueError, KeyError, TypeError):
            return False

    answers = [c.message.content for c in r.choices if c.finish_reason == "stop"]
    check(
        "json_schema keywords (pattern, format, minimum/maximum, min/maxLength): sampled answers hold",
        answers and all(keyword_valid(a) for a in answers),
        [c.message.content for c in r.choices],
    )
    try:
        client.chat.completions.create(model=BASE, messages=messages, tools=[WEATHER], max_tokens=8)
        check("tools on a template without tools: 400", False, "no error")
    except openai.BadRequestError as e:
        check(
            "tools on a template without tools: 400 naming tools",
            e.body.get("param") == "tools" and "does not define tool use" in e.body.get("message", ""),
            e.body,
        )

    r = client.chat.completions.create(model=BASE, messages=messages, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    check(
        "chat logprobs: one entry per token, 3 alternatives, greedy picks the first",
        len(content) == r.usage.completion_tokens
        and all(len(t.top_logprobs) == 3 and t.logprob <= 0 and abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6 for t in content)
        and "".join(t.token for t in content) == r.choices[0].message.content,
        r,
    )
    r = client.completions.create(model=BASE, prompt="The sky is", temperature=0, max_tokens=6, logprobs=2)
    lp = r.choices[0].logprobs
    check(
        "completion logprobs: tokens, token_logprobs, top_logprobs",
        len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
        and all(len(t) == 2 for t in lp.top_logprobs),
        r,
    )
    sampled = {"temperature": 1.0, "seed": 7, "max_tokens": 16, "n": 3}
    a = client.chat.completions.create(model=BASE, messages=messages, **sampled)
    b = client.chat.completions.create(model=BASE, messages=messages, **sampled)
    texts = [c.message.content for c in a.choices]
    check(
        "n=3 with a seed: three choices, reproducible",
        [c.index for c in a.choices] == [0, 1, 2] and texts == [c.message.content for c in b.choices],
        (texts, b),
    )
    chunks = list(client.chat.completions.create(model=BASE, messages=messages, stream=True, stream_options={"include_usage": True}, **sampled))
    joined = ["", "", ""]
    for ch in chunks:
        for c in ch.choices:
            joined[c.index] += c.delta.content or ""
    check("n=3 streamed equals n=3 whole", joined == texts, (joined, texts))
    check(
        "include_usage: the last chunk carries usage for all choices",
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == a.usage.completion_tokens,
        chunks[-1],
    )


def run_checks(openai, base_url, server):
    client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    ids = [m.id for m in client.models.list().data]
    check("models lists the base and both adapters", ids == [BASE, "a", "b"], ids)

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    greedy = {"temperature": 0, "max_tokens": 48}
    whole = client.chat.completions.create(model=BASE, messages=messages, **greedy)
    answer = whole.choices[0].message.content
    check("chat answer is non-empty", bool(answer), whole)
    chunks = list(client.chat.completions.create(model=BASE, messages=messages, stream=True, **greedy))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check("streamed chat deltas equal the whole answer", streamed == answer, (streamed, answer))
    check(
        "stream ends with the same finish reason",
        chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason,
        chunks[-1],
    )
    stopped = client.chat.completions.create(model=BASE, messages=messages, stop=["Paris"], **greedy)
    text = stopped.choices[0].message.content
    check("a stop string cuts the answer", "Paris" not in text and answer.startswith(text), text)

    comp = client.completions.create(model=BASE, prompt="The sky is", **greedy)
    comp_stream = client.completions.create(model=BASE, prompt="The sky is", stream=True, **greedy)
    joined = "".join(c.choices[0].text for c in comp_stream)
    check("streamed completion equals the whole one", joined == comp.choices[0].text, (joined, comp))
    check(
        "usage adds up",
        comp.usage.total_tokens == comp.usage.prompt_tokens + comp.usage.completion_tokens,
        comp.usage,
    )
    seeded = {"temperature": 0.9, "top_p": 0.95, "seed": 42, "max_tokens": 32}
    s1 = client.chat.completions.create(model=BASE, messages=messages, **seeded).choices[0].message.content
    s2 = client.chat.completions.create(model=BASE, messages=messages, **seeded).choices[0].message.content
    check("one seed gives one sampled answer", s1 == s2, (s1, s2))

    poem = [{"role": "user", "content": "Write a short poem about the sea."}]
    replies = {
        m: client.chat.completions.create(model=m, messages=poem, **greedy).choices[0].message.content
        for m in (BASE, "a", "b")
    }
    check("two adapters answer differently", replies["a"] != replies["b"], replies)
    check("an adapter changes the base answer", replies["a"] != replies[BASE], replies)

    status, body = raw_post(base_url, "/v1/chat/completions", b'{"model": "smollm2", "messages": [')
    check("malformed JSON: 400 with an error object", status == 400 and error_object(body), (status, body))
    # http.client sends the whole body before it reads: it must get the 413, not a reset.
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", "/v1/chat/completions", b" " * (20 << 20), {"Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        big = (r.status, error_object(json.load(r)))
    except OSError as e:
        big = e
    check("20 MB body: http.client reads the 413 with an error object", big == (413, True), big)
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check("unknown model: 404", False, "no error")
    except openai.NotFoundError as e:
        check("unknown model: 404 model_not_found", e.body.get("code") == "model_not_found", e.body)
    try:
        long = [{"role": "user", "content": "hello " * 2000}]
        client.chat.completions.create(model=BASE, messages=long, max_tokens=8)
        check("oversized prompt: 400", False, "no error")
    except openai.BadRequestError as e:
        check("oversized prompt: 400 context_length_exceeded", e.body.get("code") == "context_length_exceeded", e.body)
    try:
        bad = openai.OpenAI(base_url=base_url + "/v1", api_key="wrong", max_retries=0)
        bad.chat.completions.create(model=BASE, messages=messages)
        check("wrong API key: 401", False, "no error")
    except openai.AuthenticationError as e:
        check("wrong API key: 401 invalid_api_key", e.body.get("code") == "invalid_api_key", e.body)

    structured_checks(openai, client)

    # SIGTERM in the middle of a stream: the stream runs to its end, then the server exits.
    got = {}

    def long_stream():
        parts, finish = [], None
        for c in client.completions.create(
            model=BASE, prompt="1, 2, 3, 4,", temperature=0, max_tokens=200, stream=True
        ):
            parts.append(c.choices[0].text)
            finish = c.choices[0].finish_reason or finish
            if len(parts) == 3:
                server.send_signal(signal.SIGTERM)
        got["parts"], got["finish"] = parts, finish

    t = threading.Thread(target=long_stream)
    t.start()
    t.join(timeout=120)
    check(
        "SIGTERM lets a running stream finish",
        got.get("finish") == "length" and len(got.get("parts", [])) > 3,
        got,
    )
    try:
        code = server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        code = None
    check("the server exits 0 after SIGTERM", code == 0, code)


if __name__ == "__main__":
    main()
