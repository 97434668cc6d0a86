"""The Hugging Face cache as `huggingface_hub` writes it, and the requests it sends, for
bora's download tests (`crates/bora-hub/tests/hub_download.rs`).

A local server plays the Hub for a tiny model repo (two commits: `main` and the tag `v1`;
an LFS weight file redirected to a storage host on another port, regular files served
directly), and `huggingface_hub.hf_hub_download` fetches every file of both revisions into an
empty cache. Written to `crates/bora-hub/tests/fixtures/hf_cache/`:

- `hub/models--bora-test--tiny/`: the cache tree (blobs, snapshots with relative symlinks,
  refs), without huggingface_hub's lock and tree-listing files;
- `repo.json`: the repo the server played (commits, refs, files, their etags);
- `requests.json`: method, path, and whether a token and a Range were sent, per request.

Run: python3 scripts/make_hub_cache_fixtures.py
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixture_venv import ensure_venv  # noqa: E402

ensure_venv(__file__)

import huggingface_hub  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/bora-hub/tests/fixtures/hf_cache"
REPO = "bora-test/tiny"
TOKEN = "hf_fixturetoken_0123456789"
LFS_SUFFIXES = (".safetensors", ".gguf", ".bin")


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def weights(seed: int) -> bytes:
    return bytes((i * 2654435761 >> 24 ^ seed) & 0xFF for i in range(3000))


COMMITS = {
    "1111111111111111111111111111111111111111": {
        "config.json": b'{"model_type": "llama", "version": 1}\n',
        "tokenizer_config.json": b'{"bos_token": "<s>"}\n',
        "model.safetensors": weights(1),
    },
    "2222222222222222222222222222222222222222": {
        "config.json": b'{"model_type": "llama", "version": 2}\n',
        "tokenizer_config.json": b'{"bos_token": "<s>"}\n',
        "chat_template.jinja": b"{% for m in messages %}{{ m.content }}{% endfor %}",
        "model.safetensors": weights(2),
    },
}
REFS = {"v1": "1111111111111111111111111111111111111111", "main": "2222222222222222222222222222222222222222"}
REQUESTS = []


def etag(path: str, data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if path.endswith(LFS_SUFFIXES) else git_sha1(data)


class Handler(BaseHTTPRequestHandler):
    storage_url = ""

    def log_message(self, *args):
        pass

    def record(self):
        REQUESTS.append({
            "method": self.command,
            "path": self.path.split("?")[0],
            "authorization": self.headers.get("authorization") == f"Bearer {TOKEN}",
            "range": self.headers.get("range"),
        })

    def answer(self, status, headers, body=b""):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self.record()
        path = self.path.split("?")[0]
        if path.startswith("/storage/"):
            sha = path.rsplit("/", 1)[1]
            data = next(d for files in COMMITS.values() for p, d in files.items() if etag(p, d) == sha)
            return self.answer(200, {"etag": f'"{sha}"'}, data)
        prefix = f"/{REPO}/resolve/"
        assert path.startswith(prefix), path
        rev, file = path[len(prefix):].split("/", 1)
        commit = REFS.get(rev, rev)
        data = COMMITS[commit][file]
        tag = etag(file, data)
        headers = {"x-repo-commit": commit}
        if file.endswith(LFS_SUFFIXES):
            headers.update({
                "x-linked-etag": f'"{tag}"',
                "x-linked-size": str(len(data)),
                "etag": f'"{git_sha1(b"pointer " + tag.encode())}"',
                "location": f"{self.storage_url}/storage/lfs/{tag}",
            })
            return self.answer(302, headers)
        headers["etag"] = f'"{tag}"'
        return self.answer(200, headers, data)


def serve() -> tuple[str, list]:
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    hub, storage = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    Handler.storage_url = storage
    return hub, servers


def main():
    hub, servers = serve()
    cache = Path(tempfile.mkdtemp())
    try:
        for rev in ["v1", "main"]:
            for file in sorted(COMMITS[REFS[rev]]):
                huggingface_hub.hf_hub_download(
                    REPO, file, revision=rev, cache_dir=cache, endpoint=hub, token=TOKEN,
                )
        if OUT.exists():
            shutil.rmtree(OUT)
        repo_dir = f"models--{REPO.replace('/', '--')}"
        dest = OUT / "hub" / repo_dir
        dest.mkdir(parents=True)
        for part in ["blobs", "snapshots", "refs"]:
            shutil.copytree(cache / repo_dir / part, dest / part, symlinks=True)
        repo = {
            "repo": REPO,
            "refs": REFS,
            "commits": {
                c: {p: {"etag": etag(p, d), "size": len(d), "lfs": p.endswith(LFS_SUFFIXES)}
                    for p, d in files.items()}
                for c, files in COMMITS.items()
            },
        }
        (OUT / "repo.json").write_text(json.dumps(repo, indent=1, sort_keys=True) + "\n")
        storage_port = Handler.storage_url.rsplit(":", 1)[1]
        for r in REQUESTS:
            r["host"] = "storage" if r["path"].startswith("/storage/") else "hub"
        (OUT / "requests.json").write_text(json.dumps(REQUESTS, indent=1) + "\n")
        (OUT / "VERSION").write_text(f"huggingface_hub {huggingface_hub.__version__}\n")
        print(f"wrote {OUT} ({len(REQUESTS)} requests; storage port was {storage_port})")
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        for s in servers:
            s.shutdown()


if __name__ == "__main__":
    main()
