"""Requests per second and time to first token of `tinyllm serve` under concurrent clients.

    python scripts/bench_serve.py [--model smollm2-135m] [--clients 1,2,4] [--requests 4]
                                  [--num-predict 16] [--url http://127.0.0.1:PORT]

Without --url it starts `tinyllm serve MODEL` on a free loopback port and stops it at
the end.  Each client sends --requests streaming /api/generate requests, one after
the other (bounded loops); the clients of one round run at the same time.  A model
serves one generation at a time, so with more clients the time to first token grows
by the time the requests ahead in line take, while requests/s stays about the same:
the figures show that queue.  Only loopback URLs are accepted: this is a benchmark of
this machine, not a load generator.

Prints, per round: requests/s, generated tokens/s over the wall time, and time to
first token (median and worst) in ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Why is the sky blue?", "Name three fruits.", "What is a prime number?", "Say hello in French.",
           "What is the capital of Spain?", "How many legs has a spider?"]


def one_request(host: str, port: int, model: str, prompt: str, num_predict: int) -> tuple:
    """(seconds to the first token, seconds in all, tokens generated) of one streaming request."""
    body = json.dumps({"model": model, "prompt": prompt, "stream": True,
                       "options": {"temperature": 0, "num_predict": num_predict}})
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, final = None, {}
    for line in resp:
        obj = json.loads(line)
        if ttft is None and obj.get("response"):
            ttft = time.perf_counter() - t0
        if obj.get("done"):
            final = obj
    conn.close()
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total, final.get("eval_count", 0)


def bench_round(host, port, model, n_clients: int, n_requests: int, num_predict: int) -> dict:
    results, errors = [], []

    def client(i):
        for k in range(n_requests):
            try:
                results.append(one_request(host, port, model, PROMPTS[(i + k) % len(PROMPTS)], num_predict))
            except Exception as e:          # report, do not hang the round
                errors.append(repr(e))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    return {"clients": n_clients, "requests": len(results), "errors": errors, "wall_s": wall,
            "req_per_s": len(results) / wall, "tok_per_s": sum(r[2] for r in results) / wall,
            "ttft_median_ms": 1000 * statistics.median(ttfts) if ttfts else None,
            "ttft_max_ms": 1000 * ttfts[-1] if ttfts else None}


def start_server(model: str) -> tuple:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tinyllm", "serve", model, "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:             # the first model is loaded before the server listens
        if line.startswith("tinyllm serve:"):
            break
    else:
        raise SystemExit(f"server exited with {proc.wait()}")
    threading.Thread(target=proc.stderr.read, daemon=True).start()    # keep its pipe drained
    return proc, port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--clients", default="1,2,4", help="concurrent clients per round, comma-separated")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per round")
    ap.add_argument("--num-predict", type=int, default=16)
    ap.add_argument("--url", default=None, help="an already running server (loopback only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rounds = [int(x) for x in args.clients.split(",")]
    if not all(0 < c <= 16 for c in rounds) or not 0 < args.requests <= 50 or not 0 < args.num_predict <= 256:
        raise SystemExit("bounded: 1-16 clients, 1-50 requests each, num_predict 1-256")
    proc = None
    if args.url:
        u = urlparse(args.url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url must be a loopback address")
        host, port = u.hostname, u.port or 11434
    else:
        proc, port = start_server(args.model)
        host = "127.0.0.1"
    try:
        one_request(host, port, args.model, "Hi", 2)        # warm-up: first-use costs stay out
        out = [bench_round(host, port, args.model, c, args.requests, args.num_predict) for c in rounds]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"tinyllm serve, {args.model}: streaming /api/generate, num_predict {args.num_predict}, "
          f"{args.requests} requests per client")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'tok/s':>7} {'TTFT median ms':>15} {'TTFT max ms':>12}")
    for r in out:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['req_per_s']:>7.2f} {r['tok_per_s']:>7.1f} "
              f"{r['ttft_median_ms']:>15.0f} {r['ttft_max_ms']:>12.0f}"
              + (f"  errors: {r['errors'][:2]}" if r["errors"] else ""))


if __name__ == "__main__":
    main()
