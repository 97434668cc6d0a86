"""Records what the official Mistral Python client (`mistralai`) sends for a chat completion,
and proves the answers bora's fake Mistral API gives are ones that client accepts.

A local server answers `POST /v1/chat/completions` with an answer shaped as the API's own
(`ChatCompletionResponse`: id, object, model, usage, created, choices with an assistant
message and finish_reason); the client parses it into its pydantic models, so a shape the
client would reject fails this script. Every request (method, path, the headers that matter,
JSON body) and the answer given are written to
`crates/bora-hub/tests/fixtures/mistral_chat.json`, which bora-hub's tests replay: bora's
chat client must send what the official client sends, and read what the API answers.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ROOT, ensure_venv  # noqa: E402

ensure_venv(__file__)

from mistralai.client import Mistral  # noqa: E402

API_KEY = "test-mistral-key-0123456789"
OUT = ROOT / "crates/bora-hub/tests/fixtures/mistral_chat.json"

# Case name -> (keyword arguments of `chat.complete`, answer content, finish reason, usage).
CASES = {
    "plain": (
        dict(
            model="mistral-large-latest",
            messages=[
                {"role": "system", "content": "You write training data."},
                {"role": "user", "content": "Write one question about rivers."},
            ],
            temperature=0.7,
            max_tokens=256,
            random_seed=42,
        ),
        "Which river flows through Lyon?",
        "stop",
        (21, 8),
    ),
    "json_mode": (
        dict(
            model="mistral-small-latest",
            messages=[{"role": "user", "content": "Answer with JSON: {\"winner\": \"A\"}"}],
            temperature=0.0,
            max_tokens=64,
            response_format={"type": "json_object"},
        ),
        "{\"winner\": \"A\", \"reason\": \"more accurate\"}",
        "stop",
        (17, 12),
    ),
    "length": (
        dict(
            model="open-mistral-nemo",
            messages=[{"role": "user", "content": "Count to one hundred."}],
            max_tokens=4,
        ),
        "1, 2,",
        "length",
        (9, 4),
    ),
}

KEPT_HEADERS = ("authorization", "content-type", "accept")
recorded = []
answers = {}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        content, finish, (p, c) = answers[body["model"]]
        answer = {
            "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
            "object": "chat.completion",
            "model": body["model"],
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
            "created": 1765130000,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "tool_calls": None, "prefix": False},
                    "finish_reason": finish,
                }
            ],
        }
        recorded.append({
            "method": "POST",
            "path": self.path,
            "headers": {k: self.headers[k] for k in KEPT_HEADERS if self.headers[k] is not None},
            "body": body,
            "answer": answer,
        })
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Mistral(api_key=API_KEY, server_url=f"http://127.0.0.1:{server.server_address[1]}")
    cases = {}
    for name, (kwargs, content, finish, usage) in CASES.items():
        answers[kwargs["model"]] = (content, finish, usage)
        res = client.chat.complete(**kwargs)
        assert res.choices[0].message.content == content, res
        assert res.choices[0].finish_reason == finish, res
        assert (res.usage.prompt_tokens, res.usage.completion_tokens) == usage, res
        cases[name] = recorded[-1]
    server.shutdown()
    import mistralai.client._version as v
    OUT.write_text(json.dumps({"client": f"mistralai {v.__version__}", "api_key": API_KEY, "cases": cases}, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
