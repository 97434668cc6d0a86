"""Records what the `weave` Python library sends when it evaluates two models with one scorer,
so bora's Weave client can be checked against the library's own requests.

The script runs a `weave.Evaluation` (a dataset of rows, one scorer) over two `weave.Model`s,
"base" and "tuned", with `asyncio.run(evaluation.evaluate(model))` for each, then one traced
op call shaped as an OpenAI chat completion (what `bora serve --weave` traces). Everything goes
to a local recording server that plays both W&B's GraphQL API (`WANDB_BASE_URL`) and the Weave
trace server (found as weave finds it: `WANDB_BASE_URL` + `/traces` when no
`WF_TRACE_SERVER_URL` is set). The API key is a fake.

The server answers what weave needs to go on: the viewer's default entity, the project,
`server_info`, and digests for objects, tables and files computed with weave's own digest
module (`weave.trace.serialization.digest`, the copy the real trace server shares), so the refs
in the recording are the refs a real server would hand out for these values. Every request
(method, path, the headers that matter, JSON body) and the answer given are written to
`crates/bora-hub/tests/fixtures/weave_eval.json`.

Run with any Python 3.10+: it creates `.venv-weave` at the repo root with the pinned version.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-weave"
PACKAGES = ["weave==0.54.0"]
OUT = ROOT / "crates/bora-hub/tests/fixtures/weave_eval.json"
API_KEY = "test-wandb-key-0123456789abcdef0123456789abcdef01234567"
ENTITY = "bora-team"
PROJECT = "bora-evals"


def ensure_venv() -> None:
    """Re-executes this script inside `.venv-weave`, creating it with the pinned packages."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    marker = VENV / "bora-packages.txt"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    wanted = "\n".join(PACKAGES)
    if not marker.exists() or marker.read_text() != wanted:
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", *PACKAGES])
        marker.write_text(wanted)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


ensure_venv()

KEPT_HEADERS = ("authorization", "content-type", "accept", "x-weave-trace-id")
recorded = []
lock = threading.Lock()


def graphql_answer(query: str, variables: dict) -> dict:
    if "viewer" in query:
        return {"viewer": {"username": "bora-user", "defaultEntity": {"name": ENTITY}}}
    if "upsertModel" in query:
        return {"upsertModel": {"model": {"name": variables["name"], "description": None}}}
    if "project(" in query:
        # The project does not exist yet, so weave creates it.
        return {"project": None}
    if "serverInfo" in query:
        return {"serverInfo": {"cliVersionInfo": {}, "latestLocalVersionInfo": None}}
    raise ValueError(f"unexpected GraphQL query: {query}")


def trace_answer(path: str, body: dict):
    from weave.trace.serialization.digest import (
        bytes_digest,
        compute_object_digest,
        compute_row_digest,
        compute_table_digest,
    )

    if path == "/server_info":
        return {"min_required_weave_python_version": "0.0.0", "trace_server_version": "0.0.0"}
    if path == "/obj/create":
        return {"digest": compute_object_digest(body["obj"]["val"])}
    if path == "/table/create":
        rows = [compute_row_digest(r) for r in body["table"]["rows"]]
        return {"digest": compute_table_digest(rows), "row_digests": rows}
    if path == "/file/create":
        raise AssertionError("files are multipart, handled before")
    if path.endswith("/calls/complete") or path.endswith("/call/end"):
        return {}
    if path.endswith("/call/start"):
        return {"id": body["start"]["id"], "trace_id": body["start"]["trace_id"]}
    if path == "/call/upsert_batch":
        return {"res": [{"req": item["req"]} for item in body["batch"]]}
    if path == "/feedback/batch/create":
        return {"res": []}
    raise ValueError(f"unexpected trace server request: {path}")


def multipart_file(content_type: str, data: bytes) -> tuple[dict, bytes]:
    """The form fields and the file of a multipart `/file/create` upload."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + data
    )
    fields, content = {}, b""
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None:
            content = part.get_payload(decode=True)
            fields[name] = part.get_filename()
        else:
            fields[name] = part.get_payload(decode=True).decode()
    return fields, content


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self, method: str):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        entry = {
            "method": method,
            "path": self.path,
            "headers": {k: self.headers[k] for k in KEPT_HEADERS if self.headers[k] is not None},
        }
        status = 200
        try:
            if path == "/graphql":
                body = json.loads(raw)
                entry["body"] = body
                answer = {"data": graphql_answer(body["query"], body.get("variables") or {})}
            elif path.startswith("/traces/"):
                path = path[len("/traces"):]
                if path == "/file/create":
                    from weave.trace.serialization.digest import compute_file_digest

                    fields, content = multipart_file(self.headers["content-type"], raw)
                    entry["form"] = fields
                    entry["file"] = content.decode()
                    answer = {"digest": compute_file_digest(content)}
                else:
                    body = json.loads(raw) if raw else None
                    entry["body"] = body
                    answer = trace_answer(path, body)
            else:
                raise ValueError(f"unexpected request: {method} {self.path}")
        except Exception as e:  # the recording must show what was not understood
            status = 500
            answer = {"error": repr(e)}
            print(f"recording server: {method} {self.path}: {e!r}", file=sys.stderr)
        entry["status"] = status
        entry["answer"] = answer
        with lock:
            recorded.append(entry)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def log_message(self, *args):
        pass


ROWS = [
    {"prompt": "What is the capital of France?", "expected": "Paris"},
    {"prompt": "2 + 2 =", "expected": "4"},
    {"prompt": "Opposite of hot?", "expected": "cold"},
]
# Per model: the answer to each prompt and its token counts (prompt, completion).
ANSWERS = {
    "base": {
        "What is the capital of France?": ("Lyon", 12, 3),
        "2 + 2 =": ("4", 7, 1),
        "Opposite of hot?": ("warm", 8, 2),
    },
    "tuned": {
        "What is the capital of France?": ("Paris", 12, 2),
        "2 + 2 =": ("4", 7, 1),
        "Opposite of hot?": ("cold", 8, 1),
    },
}


# The model name each answer reports: the key of its token counts in the call summary.
MODEL_IDS = {"base": "SmolLM2-135M-Instruct", "tuned": "SmolLM2-135M-Instruct+demo-adapter"}


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    os.environ.update({
        "WANDB_BASE_URL": base_url,
        "WANDB_API_KEY": API_KEY,
        "WEAVE_PRINT_CALL_LINK": "false",
        "WEAVE_DISABLED": "false",
        "WANDB_SILENT": "true",
        "WEAVE_PARALLELISM": "1",
        # Each run sends everything: no cache of earlier runs' objects in the home directory.
        "WEAVE_USE_SERVER_CACHE": "false",
        "HOME": tempfile.mkdtemp(prefix="weave-home-"),
    })
    os.environ.pop("WF_TRACE_SERVER_URL", None)
    os.environ.pop("WANDB_ENTITY", None)

    import asyncio

    import weave

    class BoraModel(weave.Model):
        """A model as bora evaluates it: a base model, with or without a LoRA adapter."""

        base_model: str
        adapter: str | None = None
        artifact: str | None = None

        @weave.op
        def predict(self, prompt: str) -> dict:
            answer, prompt_tokens, completion_tokens = ANSWERS[self.name][prompt]
            return {
                "model": MODEL_IDS[self.name],
                "answer": answer,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }

    class BoraMetric(weave.Scorer):
        """One of bora's task metrics as a scorer."""

        metric: str

        @weave.op
        def score(self, *, output: dict, expected: str) -> dict:
            return {"correct": output["answer"].strip().lower() == expected.lower()}

    weave.init(PROJECT)
    dataset = weave.Dataset(name="bora-test-rows", rows=ROWS)
    scorer = BoraMetric(name="exact_match", metric="exact_match")
    evaluation = weave.Evaluation(name="bora-eval", dataset=dataset, scorers=[scorer])
    models = [
        BoraModel(name="base", base_model="HuggingFaceTB/SmolLM2-135M-Instruct"),
        BoraModel(
            name="tuned",
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
            adapter="runs/demo/adapter",
            artifact=f"wandb-artifact:///{ENTITY}/{PROJECT}/demo-adapter:v0",
        ),
    ]
    summaries = {}
    for model in models:
        summaries[model.name] = asyncio.run(evaluation.evaluate(model))
    print(json.dumps(summaries, indent=1))

    @weave.op(name="bora.serve.chat")
    def chat(model: str, messages: list) -> dict:
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
        }

    chat("tuned", [{"role": "user", "content": "What is the capital of France?"}])
    weave.finish()
    server.shutdown()

    OUT.write_text(json.dumps({
        "library": f"weave {weave.__version__}",
        "api_key": API_KEY,
        "entity": ENTITY,
        "project": PROJECT,
        "base_url": base_url,
        "rows": ROWS,
        "summaries": summaries,
        "requests": recorded,
    }, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(recorded)} requests")


if __name__ == "__main__":
    main()
