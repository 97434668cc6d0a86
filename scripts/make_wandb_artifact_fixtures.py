"""Records what the official `wandb` Python package sends when a run logs a model artifact,
when the same files are logged again, when a later run uses the artifact, and when it is
linked to a registry collection; and, with `--multipart`, when a file is large enough for
W&B's multipart upload.

A local server plays W&B's API: it answers the GraphQL operations wandb-core sends (the
run's `UpsertBucket`, `CreateArtifact`, `CreateArtifactManifest`, `CreateArtifactFiles` with
upload URLs, `CommitArtifact`, `UseArtifact`, `LinkArtifact`, and the lookups around them),
takes the uploads and `file_stream`, and keeps artifacts by digest the way W&B does (a
second `CreateArtifact` with the digest of the collection's latest committed version gets
that version back, and nothing is uploaded). Every request is written, in order, to
`crates/bora-hub/tests/fixtures/wandb_artifact.json`, which bora-hub's tests replay: bora
must send the same operations with the same variables, and its manifest digests must be the
ones wandb computed here.

What is stripped, being specific to this machine or this moment: the run ids (fixed by
`WANDB_RUN_ID`), the server's port (recorded as `http://wandb.local`), the checkout's
path in the run's `program` (recorded as `.`), the client's
`User-Agent` and tracing headers, and the bodies of run files that are not artifacts
(`wandb-metadata.json`, `output.log`, `requirements.txt`, `config.yaml`), recorded as their
names only. Upload bodies are recorded as size and base64 MD5 (and text when small).
"""
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-wandb"
WANDB = "wandb==0.31.0"
OUT = ROOT / "crates/bora-hub/tests/fixtures/wandb_artifact.json"
OUT_MULTIPART = ROOT / "crates/bora-hub/tests/fixtures/wandb_artifact_multipart.json"
API_KEY = "local-test-key-0123456789abcdef0123456789abcdef"
ENTITY = "team"
PROJECT = "proj"
ORG = "team-org"


def ensure_venv() -> None:
    """Re-executes this script inside `.venv-wandb` with the pinned wandb."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    marker = VENV / "bora-packages.txt"
    if not marker.exists() or marker.read_text() != WANDB:
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", WANDB])
        marker.write_text(WANDB)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


ensure_venv()

import wandb  # noqa: E402

KEPT_HEADERS = ("authorization", "content-type", "content-md5", "content-length")
RUN_FILES = ("wandb-metadata.json", "output.log", "requirements.txt", "config.yaml")


class Server:
    """W&B's API as far as wandb's artifact calls go, recording each request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.recorded = []
        self.artifacts = {}  # id -> dict(name, type, digest, state, version, sequence)
        self.sequences = {}  # "type/name" -> list of artifact ids, in version order
        self.uploads = {}  # storage path -> bytes md5 b64
        self.manifests = {}  # artifact id -> manifest bytes
        self.links = {}  # portfolio name -> linked artifact ids, in version order
        self.url = None

    def record(self, entry):
        with self.lock:
            self.recorded.append(entry)


SERVER = Server()


def operation_name(body):
    if body.get("operationName"):
        return body["operationName"]
    m = re.search(r"(query|mutation)\s+([A-Za-z_]+)", body.get("query", ""))
    return m.group(2) if m else None


def graphql_answer(body):
    op = operation_name(body)
    v = body.get("variables") or {}
    s = SERVER
    if op == "Viewer":
        return {"viewer": {"id": "VXNlcjox", "entity": ENTITY, "username": "user",
                           "email": "user@example.com", "flags": "{}", "admin": False,
                           "teams": {"edges": [{"node": {"name": ENTITY}}]}}}
    if op == "ServerFeaturesQuery":
        return {"serverInfo": {"features": []}}
    if op in ("ServerInfo", "ProbeServerCapabilities"):
        return {"serverInfo": {"cliVersionInfo": {}, "latestLocalVersionInfo": None,
                               "features": []}}
    if op == "UpsertBucket":
        name = v.get("name") or "run"
        return {"upsertBucket": {"bucket": {
            "id": "QnVja2V0OjE=", "name": name, "displayName": v.get("displayName") or name,
            "description": None, "config": "{}", "sweepName": None, "tags": [],
            "historyLineCount": 0,
            "project": {"id": "UHJvamVjdDox", "name": v.get("project") or PROJECT,
                        "entity": {"id": "RW50aXR5OjE=", "name": v.get("entity") or ENTITY}},
        }, "inserted": True}}
    if op == "RunResumeStatus":
        return {"model": {"id": "UHJvamVjdDox", "name": PROJECT,
                          "entity": {"id": "RW50aXR5OjE=", "name": ENTITY}, "bucket": None}}
    if op == "CreateRunFiles":
        return {"createRunFiles": {"runID": "UnVuOjE=", "uploadHeaders": [],
                                   "files": [{"name": f, "uploadUrl": f"{s.url}/runfiles/{f}"}
                                             for f in v["files"]]}}
    if op in ("XXHashDigestsEnabled",):
        return {"entity": {"xxhashDigestsEnabled": False}}
    if op == "FetchArtifactDigestAlgorithm":
        return {"project": {"artifactType": None}}
    if op in ("FetchOrgEntityFromEntity", "FetchOrgInfoFromEntity"):
        return {"entity": {"organization": {"name": ORG, "orgEntity": {"name": ORG}},
                           "user": None}}
    if op == "OrgFeatureFlags":
        return {"organization": {"featureFlags": []}}
    if op == "CreateArtifact":
        inp = v.get("input", v)
        key = f"{inp['artifactTypeName']}/{inp['artifactCollectionName']}"
        with s.lock:
            ids = s.sequences.setdefault(key, [])
            for aid in ids:
                a = s.artifacts[aid]
                if a["digest"] == inp["digest"] and a["state"] == "COMMITTED":
                    return create_artifact_answer(a, ids)
            aid = base64.b64encode(f"Artifact:{len(s.artifacts) + 1}".encode()).decode()
            a = {"id": aid, "digest": inp["digest"], "state": "PENDING",
                 "version": len(ids), "sequence": key, "name": inp["artifactCollectionName"]}
            s.artifacts[aid] = a
            ids.append(aid)
            return create_artifact_answer(a, ids)
    if op == "CreateArtifactManifest":
        return {"createArtifactManifest": {"artifactManifest": {
            "id": "QXJ0aWZhY3RNYW5pZmVzdDox",
            "file": {"id": "RmlsZTox", "uploadUrl": f"{s.url}/manifest/{v['artifactID']}",
                     "uploadHeaders": []}}}}
    if op == "UpdateArtifactManifest":
        return {"updateArtifactManifest": {"artifactManifest": {
            "id": v["artifactManifestID"],
            "file": {"id": "RmlsZTox", "uploadUrl": f"{s.url}/manifest/x", "uploadHeaders": []}}}}
    if op == "CreateArtifactFiles":
        edges = []
        for f in v["input"]["artifactFiles"]:
            path = f"wandb_artifacts/{f['artifactID']}/{f['md5']}"
            node = {"storagePath": path, "uploadUrl": f"{s.url}/storage/{path}",
                    "uploadHeaders": [], "uploadMultipartUrls": None,
                    "artifact": {"id": f["artifactID"]}}
            parts = f.get("uploadPartsInput")
            if parts:
                node["uploadMultipartUrls"] = {"uploadID": "upload-1", "uploadUrlParts": [
                    {"partNumber": p["partNumber"],
                     "uploadUrl": f"{s.url}/storage/{path}?partNumber={p['partNumber']}"}
                    for p in parts]}
            if path in s.uploads:
                node["uploadUrl"] = None
                node["uploadMultipartUrls"] = None
            edges.append({"node": node})
        return {"createArtifactFiles": {"files": {"edges": edges}}}
    if op == "CompleteMultipartUploadArtifact":
        return {"completeMultipartUploadArtifact": {"digest": "etag-complete"}}
    if op == "CommitArtifact":
        with s.lock:
            a = s.artifacts[v["artifactID"]]
            a["state"] = "COMMITTED"
        return {"commitArtifact": {"artifact": {"id": a["id"], "digest": a["digest"]}}}
    if op == "UseArtifact":
        inp = v.get("input", v)
        return {"useArtifact": {"artifact": {"id": inp.get("artifactID")}}}
    if op == "LinkArtifact":
        inp = v.get("input", v)
        with s.lock:
            links = s.links.setdefault(inp["artifactPortfolioName"], [])
            aid = inp.get("artifactID")
            if aid not in links:
                links.append(aid)
            index = links.index(aid)
        if "result:" not in body.get("query", ""):
            return {"linkArtifact": {"versionIndex": index}}
        a = s.artifacts[aid]
        fragment = artifact_fragment(a)
        portfolio = {"__typename": "ArtifactPortfolio", "name": inp["artifactPortfolioName"],
                     "project": {"id": "UHJvamVjdDoy", "internalId": "2",
                                 "name": inp["projectName"], "entity": {"name": inp["entityName"]}}}
        return {"result": {"versionIndex": index, "artifactMembership": {
            "__typename": "ArtifactCollectionMembership",
            "id": "QXJ0aWZhY3RDb2xsZWN0aW9uTWVtYmVyc2hpcDoy", "versionIndex": index,
            "createdAt": "2026-01-01T00:00:00", "aliases": [],
            "artifactCollection": portfolio, "artifact": fragment}}}
    if op == "ArtifactType":
        collection = v["name"].split(":")[0]
        known = any(k.endswith("/" + collection) for k in s.sequences)
        return {"project": {"artifact": {"artifactType": {"name": "model"}} if known else None}}
    return None


def create_artifact_answer(a, ids):
    latest = s_latest(ids)
    return {"createArtifact": {"artifact": {
        "id": a["id"], "state": a["state"], "versionIndex": a["version"],
        "artifactSequence": {"id": "QXJ0aWZhY3RTZXF1ZW5jZTox",
                             "latestArtifact": latest},
    }}}


def s_latest(ids):
    committed = [SERVER.artifacts[i] for i in ids if SERVER.artifacts[i]["state"] == "COMMITTED"]
    if not committed:
        return None
    a = committed[-1]
    return {"id": a["id"], "versionIndex": a["version"]}


def public_answer(body):
    """The Python side's lookups: `Artifact.wait` fetches the saved artifact by id, and
    `use_artifact` by name."""
    op = operation_name(body)
    v = body.get("variables") or {}
    if op == "ArtifactByID":
        return {"artifact": artifact_fragment(SERVER.artifacts[v["id"]])}
    if op == "ArtifactMembershipByName":
        collection, _, version = v["name"].partition(":")
        ids = SERVER.sequences.get(f"model/{collection}", [])
        chosen = [SERVER.artifacts[i] for i in ids
                  if f"v{SERVER.artifacts[i]['version']}" == version or version == "latest"]
        if not chosen:
            return {"project": {"artifactCollectionMembership": None}}
        a = chosen[-1]
        fragment = artifact_fragment(a)
        return {"project": {"artifactCollectionMembership": {
            "__typename": "ArtifactCollectionMembership",
            "id": "QXJ0aWZhY3RDb2xsZWN0aW9uTWVtYmVyc2hpcDox", "versionIndex": a["version"],
            "createdAt": "2026-01-01T00:00:00", "aliases": [],
            "artifactCollection": fragment["artifactSequence"], "artifact": fragment}}}
    return None


def artifact_fragment(a):
    collection = {"__typename": "ArtifactSequence", "name": a["name"],
                  "project": {"id": "UHJvamVjdDox", "internalId": "1", "name": PROJECT,
                              "entity": {"name": ENTITY}}}
    return {
        "__typename": "Artifact", "id": a["id"], "artifactSequence": collection,
        "versionIndex": a["version"], "artifactType": {"name": "model"},
        "description": None, "metadata": json.dumps(METADATA), "ttlDurationSeconds": -1,
        "ttlIsInherited": True, "tags": [], "historyStep": None, "state": a["state"],
        "size": 0, "digest": a["digest"], "digestAlgorithm": "MANIFEST_MD5",
        "commitHash": "abcdef012345", "fileCount": 2, "createdAt": "2026-01-01T00:00:00",
        "updatedAt": None,
        "aliases": [{"__typename": "ArtifactAlias", "id": "QWxpYXM6MQ==", "alias": "latest",
                     "artifactCollection": collection}],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding") == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            return data
        return self.rfile.read(n)

    def _headers(self):
        return {k: self.headers[k] for k in KEPT_HEADERS if self.headers.get(k) is not None}

    def _send(self, status, payload, extra=None):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, val in (extra or {}).items():
            self.send_header(k, val)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self._body()
        path = self.path
        if path == "/graphql":
            req = json.loads(body)
            op = operation_name(req)
            answer = graphql_answer(req)
            if answer is None:
                answer = public_answer(req)
            entry = {"method": "POST", "path": path, "headers": self._headers(),
                     "operation": op, "variables": req.get("variables"),
                     "query": req.get("query")}
            if answer is None:
                entry["unanswered"] = True
                self.server_record(entry)
                return self._send(200, {"errors": [{"message": f"unknown operation {op}"}]})
            entry["answer"] = answer
            self.server_record(entry)
            return self._send(200, {"data": answer})
        if path.startswith("/sdk/otel/"):
            # wandb's own usage telemetry: answered, not part of what a client must send.
            return self._send(200, {})
        if path.endswith("/file_stream"):
            req = json.loads(body) if body else {}
            self.server_record({"method": "POST", "path": path, "headers": self._headers(),
                                "json": req})
            return self._send(200, {"exitcode": None, "limits": {}})
        self.server_record({"method": "POST", "path": path, "unanswered": True})
        self._send(404, {})

    def do_PUT(self):
        # Read in blocks: a multipart part is 100 MiB, a single upload may be more.
        remaining = int(self.headers.get("content-length") or 0)
        md5 = hashlib.md5()
        head = b""
        size = 0
        while remaining:
            block = self.rfile.read(min(remaining, 1 << 20))
            if not block:
                break
            remaining -= len(block)
            size += len(block)
            md5.update(block)
            if len(head) < 1 << 16:
                head += block[: 1 << 16]
        entry = {"method": "PUT", "path": self.path, "headers": self._headers(),
                 "size": size, "md5": base64.b64encode(md5.digest()).decode()}
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/runfiles/") and name in RUN_FILES:
            entry.pop("md5")
            entry.pop("size")
            entry["headers"].pop("content-length", None)
        elif size < 4096:
            try:
                entry["text"] = head.decode()
            except UnicodeDecodeError:
                pass
        if self.path.startswith("/storage/") and "partNumber" not in self.path:
            SERVER.uploads[self.path[len("/storage/"):]] = entry["md5"]
        if self.path.startswith("/manifest/"):
            SERVER.manifests[self.path.rsplit("/", 1)[-1]] = head
            # The manifest names the staging copies wandb made (`local_path`): temporary
            # names of this machine, kept out of the fixture; `md5` and `size` are of the
            # manifest as sent.
            manifest = json.loads(head)
            for item in manifest["contents"].values():
                item.pop("local_path", None)
            entry["text"] = json.dumps(manifest, separators=(",", ":"))
            entry["local_path_removed"] = True
        self.server_record(entry)
        etag = '"' + md5.hexdigest() + '"'
        self._send(200, b"", {"ETag": etag})

    def do_GET(self):
        if self.path.startswith("/manifest/"):
            manifest = SERVER.manifests.get(self.path.rsplit("/", 1)[-1])
            self.server_record({"method": "GET", "path": self.path})
            if manifest is not None:
                return self._send(200, manifest)
        self.server_record({"method": "GET", "path": self.path, "unanswered": True})
        self._send(404, {})

    def server_record(self, entry):
        SERVER.record(entry)


def adapter_dir(root: Path, seed: int) -> Path:
    """A tiny PEFT adapter directory: a config and a weights file."""
    d = root / f"adapter-{seed}"
    d.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
              "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    (d / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (d / "adapter_model.safetensors").write_bytes(bytes((i * 7 + seed) % 251 for i in range(3000)))
    return d


METADATA = {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "lora": {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "v_proj"]},
            "data_sha256": "0" * 64, "final_loss": 1.25}


def init(run_id, job_type):
    return wandb.init(project=PROJECT, entity=ENTITY, id=run_id, job_type=job_type,
                      settings=wandb.Settings(x_disable_stats=True, x_disable_meta=True,
                                              disable_git=True, disable_code=True,
                                              save_code=False, console="off",
                                              x_disable_machine_info=True))


def log_adapter(run, directory):
    artifact = wandb.Artifact("demo-adapter", type="model", metadata=METADATA)
    artifact.add_file(str(directory / "adapter_config.json"))
    artifact.add_file(str(directory / "adapter_model.safetensors"))
    run.log_artifact(artifact)
    artifact.wait()
    return artifact


def mark(name):
    SERVER.record({"phase": name})


def main():
    multipart = "--multipart" in sys.argv
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    SERVER.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tmp = Path(tempfile.mkdtemp())
    os.environ.update({"WANDB_BASE_URL": SERVER.url, "WANDB_API_KEY": API_KEY,
                       "WANDB_DIR": str(tmp), "WANDB_CACHE_DIR": str(tmp / "cache"),
                       "WANDB_DATA_DIR": str(tmp / "data"), "WANDB_CONFIG_DIR": str(tmp / "cfg"),
                       "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
                       "WANDB__DISABLE_STATS": "true", "WANDB_ARTIFACT_DIR": str(tmp / "art")})
    try:
        if multipart:
            record_multipart(tmp)
        else:
            try:
                record_adapter_lineage(tmp)
            finally:
                write(OUT)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def record_multipart(tmp):
    """One file over wandb-core's multipart threshold, logged as an export would be."""
    big = tmp / "big"
    big.mkdir()
    with open(big / "model.gguf", "wb") as f:
        block = bytes(range(256)) * 4096
        for _ in range((2 * 1024**3 + 2**20) // len(block)):
            f.write(block)
    mark("multipart")
    run = init("multi001", "export")
    artifact = wandb.Artifact("demo-gguf", type="model")
    artifact.add_file(str(big / "model.gguf"))
    run.log_artifact(artifact)
    artifact.wait()
    run.finish()
    write(OUT_MULTIPART)


def record_adapter_lineage(tmp):
    first = adapter_dir(tmp, 1)
    mark("log")
    run = init("train001", "train")
    run.log({"train/loss": 1.25})
    artifact = log_adapter(run, first)
    mark("link")
    run.link_artifact(artifact, f"wandb-registry-model/demo-collection")
    run.finish()
    mark("log-same")
    run = init("train002", "train")
    log_adapter(run, first)
    run.finish()
    mark("log-different")
    run = init("train003", "train")
    log_adapter(run, adapter_dir(tmp, 2))
    run.finish()
    mark("use")
    run = init("eval0001", "eval")
    run.use_artifact(f"{ENTITY}/{PROJECT}/demo-adapter:v0", type="model")
    run.finish()


def write(path):
    text = json.dumps(SERVER.recorded, indent=1, sort_keys=True)
    text = text.replace(SERVER.url, "http://wandb.local").replace(str(ROOT), ".")
    path.write_text(text + "\n")
    unanswered = [r for r in SERVER.recorded if r.get("unanswered")]
    print(f"{len(SERVER.recorded)} requests -> {path}; unanswered: "
          f"{[r.get('operation') or r['path'] for r in unanswered]}")


if __name__ == "__main__":
    main()
