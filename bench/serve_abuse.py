#!/usr/bin/env python3
"""`bora serve` under abuse, on loopback only and bounded in time.

Starts the server, measures well-behaved clients (non-streaming chat completions from
`--clients` threads) alone, then again while `--abusers` abusive connections stay open, in
`--rounds` alternations:
a quarter never send, a quarter send their headers a byte a second (slowloris), a quarter
send a streaming request for one token and never read the answer (tiny receive buffer), a
quarter send 20 MB bodies (one per connection, a new connection every 5 s). A non-reader
asks for one token because the generation it asks for is real work, which the server shares
first come, first served with everyone (50 non-readers asking 16 tokens each queue 800
tokens ahead of the well-behaved clients); what is measured is the cost of the connections.
The abusers run in a process of their own at the lowest CPU priority (standing in for
clients on other machines); on a loaded machine their CPU use still counts against the server.
Prints both throughputs and their ratio, checks that Python's `http.client` receives the
413 for a 20 MB body, and samples the server's resident memory throughout.
`--soak SECONDS` keeps the abuse and the clients going that long and prints memory every
30 s (flat memory means bounded buffers). Standard library only.

    bench/serve_abuse.py [--bora target/release/bora] [--model M] [--seconds 30] [--rounds 3]
                         [--soak 600]
"""
import argparse
import http.client
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(port, proc, limit=120):
    end = time.time() + limit
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"bora serve exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection(HOST, port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    sys.exit("bora serve did not become ready")


BODY = json.dumps({
    "model": "bench",
    "messages": [{"role": "user", "content": "Name three colours."}],
    "max_tokens": 16,
    "temperature": 0,
})


def good_client(port, stop, counts, lock):
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
            conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            with lock:
                if r.status == 200:
                    counts["ok"] += 1
                    counts["tokens"] += json.loads(data)["usage"]["completion_tokens"]
                else:
                    counts["status"][r.status] = counts["status"].get(r.status, 0) + 1
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            with lock:
                counts["errors"] += 1
                counts["last_error"] = repr(e)
            conn = None
            time.sleep(0.05)


def measure(port, clients, seconds):
    stop = threading.Event()
    lock = threading.Lock()
    counts = {"ok": 0, "tokens": 0, "errors": 0, "status": {}, "last_error": None}
    threads = [threading.Thread(target=good_client, args=(port, stop, counts, lock)) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    counts["req_per_s"] = counts["ok"] / seconds
    counts["tok_per_s"] = counts["tokens"] / seconds
    return counts


class Abuse:
    """Keeps `n` abusive connections open, reopening each one the server closes."""

    KINDS = ("silent", "slowloris", "nonreader", "oversized")

    def __init__(self, port, n, kinds=KINDS, nonreader_tokens=1):
        self.port, self.n, self.stop = port, n, threading.Event()
        self.nonreader_tokens = nonreader_tokens
        self.opened = 0
        self.threads = []
        kinds = [getattr(self, k) for k in kinds]
        for i in range(n):
            t = threading.Thread(target=self.loop, args=(kinds[i % len(kinds)],), daemon=True)
            self.threads.append(t)

    def start(self):
        for t in self.threads:
            t.start()

    def loop(self, kind):
        while not self.stop.is_set():
            try:
                s = socket.create_connection((HOST, self.port), timeout=5)
                self.opened += 1
                kind(s)
            except OSError:
                pass
            finally:
                try:
                    s.close()
                except Exception:
                    pass
            self.stop.wait(0.2)

    def hold(self, s, step, payload=b""):
        """Sends `payload` a byte every `step` seconds (or nothing) until closed or stopped."""
        s.settimeout(step)
        for b in payload or iter(int, 1):
            if self.stop.is_set():
                return
            if payload:
                s.sendall(bytes([b]))
            try:
                if s.recv(4096) == b"":
                    return
            except socket.timeout:
                continue

    def silent(self, s):
        self.hold(s, 1.0)

    def slowloris(self, s):
        self.hold(s, 1.0, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 1000)

    def nonreader(self, s):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        body = json.dumps({"model": "bench", "stream": True, "max_tokens": self.nonreader_tokens,
                           "messages": [{"role": "user", "content": "Tell a long story."}]})
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        # Never read a byte; after a minute start over with a fresh connection.
        self.stop.wait(60)

    def oversized(self, s):
        size = 20 << 20
        s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {size}\r\n\r\n".encode())
        chunk = b" " * (1 << 16)
        for _ in range(size // len(chunk)):
            if self.stop.is_set():
                return
            s.sendall(chunk)
        s.settimeout(10)
        s.recv(4096)
        # One body per connection every few seconds: a flood of bytes, not of compute.
        self.stop.wait(5)

    def close(self):
        """Stops every abuser and waits until their connections are closed."""
        self.stop.set()
        for t in self.threads:
            t.join(15)


class AbuseProcess:
    """The abusers in a process of their own, at the lowest CPU priority: 200 threads in the
    well-behaved clients' process would hold its interpreter lock, and their own CPU use (on
    loopback the kernel's TCP work for both ends runs in the sender's calls) stands in for
    clients on other machines; what the server does for them still runs at its priority."""

    def __init__(self, port, n, kinds, nonreader_tokens):
        self.done = multiprocessing.Event()
        self.opened = multiprocessing.Value("i", 0)
        self.proc = multiprocessing.Process(
            target=self.run, args=(port, n, kinds, nonreader_tokens), daemon=True)
        self.proc.start()

    def run(self, port, n, kinds, nonreader_tokens):
        os.nice(19)
        abuse = Abuse(port, n, kinds, nonreader_tokens)
        abuse.start()
        self.done.wait()
        self.opened.value = abuse.opened
        abuse.close()

    def close(self):
        self.done.set()
        self.proc.join(30)


def check_413(port):
    """Python's http.client sends the whole body before reading: it must see the 413."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.request("POST", "/v1/chat/completions", b" " * (20 << 20), {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    return r.status, r.getheader("Connection")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bora", default=os.environ.get("BORA_BIN", "target/release/bora"))
    ap.add_argument("--model", help="model for bora serve (default: bora's default model)")
    ap.add_argument("--seconds", type=float, default=30, help="each throughput measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alone / under abuse, alternated")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--abusers", type=int, default=200)
    ap.add_argument("--kinds", default=",".join(Abuse.KINDS),
                    help="abusers, shared out in turn (a comma-separated subset of the default)")
    ap.add_argument("--nonreader-tokens", type=int, default=1,
                    help="tokens each non-reader asks for (real work, served like anyone's)")
    ap.add_argument("--soak", type=float, default=0, help="seconds of abuse + clients, memory sampled")
    args = ap.parse_args()

    port = free_port()
    cmd = [args.bora, "serve", "--host", HOST, "--port", str(port), "--name", "bench",
           "--max-batch", "8", "--max-queue", "64", "--context", "512"]
    if args.model:
        cmd += ["--model", args.model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        print(f"load: {os.getloadavg()[0]:.2f} (1-min average), cpus: {os.cpu_count()}")
        status, connection = check_413(port)
        print(f"http.client, 20 MB body: {status} (Connection: {connection})")
        measure(port, args.clients, 5)  # warm-up
        rss0 = rss_mb(proc.pid)
        # Alone and under abuse alternate, so a change in the machine's load between the
        # phases (other processes on its cores) weighs on both sides alike.
        alone_tokens = under_tokens = 0.0
        for round_ in range(1, args.rounds + 1):
            base = measure(port, args.clients, args.seconds)
            print(f"round {round_}, alone:           {base['req_per_s']:.2f} req/s, "
                  f"{base['tok_per_s']:.1f} tok/s, errors {base['errors']}, other statuses {base['status']}, "
                  f"load {os.getloadavg()[0]:.2f}")
            abuse = AbuseProcess(port, args.abusers, args.kinds.split(","), args.nonreader_tokens)
            time.sleep(3)
            under = measure(port, args.clients, args.seconds)
            print(f"round {round_}, with {args.abusers} abusers ({args.kinds}; non-readers ask "
                  f"{args.nonreader_tokens} tokens): {under['req_per_s']:.2f} req/s, {under['tok_per_s']:.1f} tok/s, "
                  f"errors {under['errors']} {under['last_error'] or ''}, other statuses {under['status']}, "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            alone_tokens += base["tok_per_s"]
            under_tokens += under["tok_per_s"]
            if round_ < args.rounds or args.soak <= 0:
                abuse.close()
                print(f"round {round_}: abusive connections opened {abuse.opened.value}")
        ratio = under_tokens / alone_tokens if alone_tokens else float("nan")
        print(f"ratio under abuse / alone over {args.rounds} rounds: {ratio:.3f} (tokens/s)")
        print(f"server RSS: {rss0:.0f} MB before, {rss_mb(proc.pid):.0f} MB after the abuse phases")
        if args.soak > 0:
            print(f"soak: {args.soak:.0f} s of abuse and clients")
            end = time.time() + args.soak
            while time.time() < end:
                m = measure(port, args.clients, min(30, max(1, end - time.time())))
                print(f"  t+{args.soak - (end - time.time()):5.0f} s: RSS {rss_mb(proc.pid):6.0f} MB, "
                      f"{m['tok_per_s']:.1f} tok/s, load {os.getloadavg()[0]:.2f}", flush=True)
        abuse.close()
        ok = status == 413 and ratio >= 0.8
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
