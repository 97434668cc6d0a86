"""Records what `huggingface_hub`'s job functions send to the Hugging Face Jobs API, and proves
the answers bora's test Jobs API gives are ones that client accepts.

A local server plays the Jobs API: `POST /api/jobs/NS` (run_job), `GET /api/jobs/NS/ID`
(inspect_job), `GET /api/jobs/NS?label=K=V` (list_jobs, answered in two pages: the first
names the second in a `Link: <URL>; rel="next"` header, which the client follows as its
`paginate` does), `POST /api/jobs/NS/ID/cancel`
(cancel_job) and the server-sent-events log stream `GET /api/jobs/NS/ID/logs`
(fetch_job_logs, followed and not), plus the answers of a bad token (401) and of a namespace
without credits (402). The client parses every answer into its own types (`JobInfo`, log
lines), so an answer shape it would reject fails this script. Each call's inputs, the requests
it made (method, path and query, the headers that matter, JSON body) and the answers given are
written to `crates/bora-hub/tests/fixtures/hf_jobs.json`; bora-hub's tests send the same inputs
through bora's client and check its requests against these.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ROOT, ensure_venv  # noqa: E402

ensure_venv(__file__, ROOT / ".venv-hfjobs", ["huggingface_hub==2.5.0"])

import huggingface_hub  # noqa: E402
from huggingface_hub import HfApi  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError  # noqa: E402

TOKEN = "hf_testtoken_0123456789"
NAMESPACE = "ada"
JOB_ID = "6933d0f1a2b4c5d6e7f80912"
OUT = ROOT / "crates/bora-hub/tests/fixtures/hf_jobs.json"
KEPT_HEADERS = ("authorization", "content-type", "accept")

# What `bora train --on hf-jobs:a10g-small` asks for, in huggingface_hub's terms.
RUN_INPUTS = dict(
    image="python:3.12",
    command=["bash", "-c", "echo start && python trainer.py"],
    env={"BORA_REPO": "ada/bora-jobs", "BORA_FOLDER": "runs/support-bot", "PYTHONUNBUFFERED": "1"},
    secrets={"HF_TOKEN": TOKEN},
    flavor="a10g-small",
    timeout="2h",
    labels={"bora-run": "support-bot"},
    name="bora-support-bot",
)

LOG_EVENTS = [
    {"timestamp": "2026-12-07T10:00:00.000Z", "data": "===== Job started at 2026-12-07 10:00:00 ====="},
    {"timestamp": "2026-12-07T10:00:01.000Z", "data": "installing the trainer"},
    {"timestamp": "2026-12-07T10:00:02.000Z", "data": "{\"event\": \"step\", \"step\": 1, \"loss\": 2.5}"},
]


def job_info(stage, message=None):
    return {
        "id": JOB_ID,
        "createdAt": "2026-12-07T10:00:00.000Z",
        "dockerImage": RUN_INPUTS["image"],
        "command": RUN_INPUTS["command"],
        "arguments": [],
        "environment": RUN_INPUTS["env"],
        "secrets": ["HF_TOKEN"],
        "flavor": RUN_INPUTS["flavor"],
        "labels": {**RUN_INPUTS["labels"], "name": RUN_INPUTS["name"]},
        "status": {"stage": stage, "message": message},
        "owner": {"id": "5e9ecfc04957053f60648a3e", "name": NAMESPACE, "type": "user"},
    }


recorded = []
# The answer the server gives next, by (method, path without query).
answers = {}
# Paginated answers, by (method, path without query): (status, answer, next page's target or
# None) in the order they are given; the next page's target goes out as a `Link` header.
pages = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self, method):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        next_page = None
        if pages.get((method, path)):
            status, answer, next_page = pages[(method, path)].pop(0)
        else:
            status, answer = answers[(method, path)]
        recorded.append({
            "method": method,
            "target": self.path,
            "headers": {k: self.headers[k] for k in KEPT_HEADERS if self.headers[k] is not None},
            "body": json.loads(raw) if raw else None,
            "status": status,
            "answer": answer,
            "next": next_page,
        })
        if isinstance(answer, list) and path.endswith("/logs"):
            data = "".join(f"data: {json.dumps(e)}\n\n" for e in answer).encode()
            kind = "text/event-stream"
        else:
            data = json.dumps(answer).encode()
            kind = "application/json"
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.send_header("connection", "close")
        if next_page is not None:
            host = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
            self.send_header("link", f'<{host}{next_page}>; rel="next"')
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def log_message(self, *args):
        pass


def call(name, fn, inputs):
    """Runs one client call and keeps its inputs, requests and what the client made of them."""
    first = len(recorded)
    try:
        result, error = fn(), None
    except HfHubHTTPError as e:
        result, error = None, {"status": e.response.status_code, "message": str(e).splitlines()[0]}
    return name, {"inputs": inputs, "requests": recorded[first:], "result": result, "error": error}


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    api = HfApi(endpoint=endpoint, token=TOKEN)
    base = f"/api/jobs/{NAMESPACE}"
    cases = {}

    answers[("POST", base)] = (200, job_info("SCHEDULING"))
    job = None

    def run():
        nonlocal job
        job = api.run_job(namespace=NAMESPACE, **RUN_INPUTS)
        return {"id": job.id, "stage": job.status.stage, "url": job.url}

    name, case = call("run_job", run, {**RUN_INPUTS, "namespace": NAMESPACE})
    assert case["result"]["url"] == f"{endpoint}/jobs/{NAMESPACE}/{JOB_ID}", case
    cases[name] = case

    answers[("GET", f"{base}/{JOB_ID}")] = (200, job_info("ERROR", "trainer exited with code 1"))

    def inspect():
        j = api.inspect_job(job_id=JOB_ID, namespace=NAMESPACE)
        return {"id": j.id, "stage": j.status.stage, "message": j.status.message, "flavor": j.flavor}

    name, case = call("inspect_job", inspect, {"job_id": JOB_ID, "namespace": NAMESPACE})
    assert case["result"]["stage"] == "ERROR", case
    cases[name] = case

    second = dict(job_info("COMPLETED"), id=JOB_ID[:-4] + "0913")
    pages[("GET", base)] = [
        (200, [job_info("RUNNING")], f"{base}?label=bora-run%3Dsupport-bot&cursor=2"),
        (200, [second], None),
    ]

    def listing():
        return [
            {"id": j.id, "stage": j.status.stage, "labels": j.labels}
            for j in api.list_jobs(labels={"bora-run": "support-bot"}, namespace=NAMESPACE)
        ]

    name, case = call("list_jobs", listing, {"labels": {"bora-run": "support-bot"}, "namespace": NAMESPACE})
    assert [j["id"] for j in case["result"]] == [JOB_ID, second["id"]], case
    assert len(case["requests"]) == 2, case
    cases[name] = case

    answers[("POST", f"{base}/{JOB_ID}/cancel")] = (200, {})
    name, case = call(
        "cancel_job",
        lambda: api.cancel_job(job_id=JOB_ID, namespace=NAMESPACE),
        {"job_id": JOB_ID, "namespace": NAMESPACE},
    )
    assert case["error"] is None, case
    cases[name] = case

    answers[("GET", f"{base}/{JOB_ID}/logs")] = (200, LOG_EVENTS)
    answers[("GET", f"{base}/{JOB_ID}")] = (200, job_info("COMPLETED"))
    for follow in (False, True):
        name, case = call(
            f"fetch_job_logs_follow_{str(follow).lower()}",
            lambda: list(api.fetch_job_logs(job_id=JOB_ID, namespace=NAMESPACE, follow=follow)),
            {"job_id": JOB_ID, "namespace": NAMESPACE, "follow": follow},
        )
        assert case["result"] == [e["data"] for e in LOG_EVENTS[1:]], case
        cases[name] = case

    # These bodies are this server's words, not the Hub's: bora reads the status and shows the
    # `error` text as it comes, so nothing depends on them.
    for status, body in [
        (401, {"error": "Invalid credentials in Authorization header"}),
        (402, {"error": "You have exceeded your monthly included credits for Jobs. Add a payment method to continue."}),
    ]:
        answers[("POST", base)] = (status, body)
        name, case = call(f"run_job_{status}", run, {**RUN_INPUTS, "namespace": NAMESPACE})
        assert case["error"]["status"] == status, case
        cases[name] = case

    server.shutdown()
    OUT.write_text(json.dumps({
        "client": f"huggingface_hub {huggingface_hub.__version__}",
        "token": TOKEN,
        "cases": cases,
    }, indent=2) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
