"""Serving throughput: 1, 4 and 16 concurrent streaming clients against `lmforge serve`.

    python benchmarks/serve.py RUN_DIR [--max-tokens 64] [--requests 2] [--concurrency 1,4,16]

Starts `lmforge serve RUN_DIR` on 127.0.0.1 (a free port), then for each concurrency level runs that
many clients at once, each sending `--requests` streaming completions one after another. Reports
the time to first token (p50, p95) and aggregate generated tokens per second, and ends with one
JSON line. Without RUN_DIR it trains a small model first (the demo preset, 60 s) in a temporary
folder. Goal: aggregate tokens/s at 16 clients >= 4x one client's, p95 time to first token < 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo,", "KING HENRY:\n", "First Citizen:\nBefore we proceed",
           "HAMLET:\nTo be,", "MACBETH:\n", "PORTIA:\nThe quality", "LEAR:\n"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(run), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {proc.stderr.read()}")
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server did not start within 120 s")


def one_request(url: str, model: str, prompt: str, max_tokens: int, seed: int) -> tuple[float, int, float]:
    """(time to first token, tokens received, total time) of one streamed completion."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
                       "seed": seed, "stream": True, "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first, tokens = None, 0
    with urllib.request.urlopen(req, timeout=120) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - t0
    return (first if first is not None else time.perf_counter() - t0), tokens, time.perf_counter() - t0


def level(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    ttfts: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(i: int) -> None:
        start.wait()
        for r in range(requests):
            ttft, n, _ = one_request(url, model, PROMPTS[(i + r) % len(PROMPTS)], max_tokens, seed=i * 100 + r)
            with lock:
                ttfts.append(ttft)
                tokens[0] += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts.sort()
    p95 = ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))]
    return {"clients": clients, "requests": len(ttfts), "tokens": tokens[0], "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens[0] / wall, 1), "ttft_p50_s": round(statistics.median(ttfts), 4),
            "ttft_p95_s": round(p95, 4)}


def train_small(folder: Path) -> Path:
    run = folder / "demo"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "lmforge.cli", "train", "--config", str(root / "configs" / "demo.yaml"),
                    "--out", str(run), "--train.time_budget_s", "60", "--runtime.compile", "off",
                    "--sample.num_samples", "0"], check=True, env=dict(os.environ, LMFORGE_NO_PROGRESS="1"))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", help="a trained LM run folder (default: train the demo model for 60 s)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--concurrency", default="1,4,16")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run) if args.run else train_small(Path(tmp.name))
    port = free_port()
    proc = start_server(run, port)
    url, model = f"http://127.0.0.1:{port}", run.resolve().name
    try:
        one_request(url, model, PROMPTS[0], 8, 0)  # warm-up
        results = []
        for n in (int(x) for x in args.concurrency.split(",")):
            r = level(url, model, n, args.requests, args.max_tokens)
            results.append(r)
            print(f"{n:>3} clients: {r['tokens_per_s']:>8.1f} tokens/s aggregate, time to first token "
                  f"p50 {r['ttft_p50_s'] * 1000:.0f} ms, p95 {r['ttft_p95_s'] * 1000:.0f} ms "
                  f"({r['requests']} requests, {r['tokens']} tokens in {r['wall_s']:.1f} s)")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        tmp.cleanup()
    by = {r["clients"]: r for r in results}
    speedup = by[max(by)]["tokens_per_s"] / by[min(by)]["tokens_per_s"] if len(by) > 1 else 1.0
    print(f"aggregate speed-up {max(by)} vs {min(by)} clients: {speedup:.2f}x (goal >= 4x); "
          f"p95 time to first token at {max(by)}: {by[max(by)]['ttft_p95_s']:.3f} s (goal < 0.5 s)")
    print(json.dumps({"benchmark": "serve", "run": str(run), "max_tokens": args.max_tokens, "levels": results,
                      "speedup": round(speedup, 2), "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
