#!/usr/bin/env python3
"""End-to-end test of `bora serve` with the real `openai` Python client.

Run with any Python 3: the script creates `.venv-serve` at the repository root on first use
(`pip install openai`), re-runs itself inside it, starts `bora serve` on a loopback port with
the default model and two small PEFT adapters it writes itself, and checks:

- /v1/models, chat and text completions, streamed and not (streamed deltas joined equal the
  non-streamed greedy answer);
- OpenAI error objects and statuses for malformed JSON (400), an unknown model (404), an
  oversized prompt (400 context_length_exceeded), a wrong API key (401) and a 20 MB body
  sent whole by `http.client` (413, received rather than a broken pipe);
- two adapters on one base answer differently;
- SIGTERM while a response is streaming: the stream still finishes and the server exits 0.

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


def ensure_venv():
    """Re-executes this script inside .venv-serve, creating it (with openai) if needed."""
    python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not python.exists():
        print(f"creating {VENV} with openai", flush=True)
        venv.create(VENV, with_pip=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "openai"], check=True)
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
        for _ in range(300):
            try:
                urllib.request.urlopen(base_url + "/health").read()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"bora serve exited with {server.returncode}")
                time.sleep(0.1)
        run_checks(openai, base_url, server)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if FAILURES:
        sys.exit(f"{len(FAILURES)} check(s) failed: {', '.join(FAILURES)}")
    print("all checks passed")


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
