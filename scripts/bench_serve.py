"""Latency of `gpumlp serve`'s POST /api/predict, measured from a client on the same host.

Starts `gpumlp serve CHECKPOINT --port 0`, sends 280×280 PNG drawings of MNIST test digits (the
page's board size, dark ink on white) one at a time over a kept-alive connection, then from 8
threads at once, and prints the median and 95th-percentile latency and the requests per second.
``--stalled N`` holds N connections that send half a request header and stop (a slowloris client),
reopening each one the server closes, for the whole measurement: what ordinary clients get while
the server sheds them (the header deadline is set to 2 s for the run). ``--burst N`` then sends N
uploads of a 2048×2048 PNG at once (the largest image the server decodes) and one drawing 0.5 s
later: how many waited their turn and for how long, and what the drawing got.

    python scripts/bench_serve.py [CHECKPOINT] [--requests 300] [--stalled 400] [--burst 50]
"""

from __future__ import annotations

import argparse
import http.client
import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from gpumlp.data.load import load_mnist


def drawing(x784) -> bytes:
    img = 255 - np.rint(np.asarray(x784).reshape(28, 28) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).resize((280, 280), Image.Resampling.BICUBIC).convert("RGBA").save(out, format="PNG")
    return out.getvalue()


def timed_posts(host: str, port: int, pngs: list[bytes]) -> list[float]:
    conn, seconds = http.client.HTTPConnection(host, port, timeout=60), []
    for png in pngs:
        start = time.perf_counter()
        conn.request("POST", "/api/predict", body=png, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        response.read()
        seconds.append(time.perf_counter() - start)
        assert response.status == 200, response.status
    conn.close()
    return seconds


def stall(host: str, port: int, n: int, stop: threading.Event) -> list[int]:
    """Keep ``n`` half-sent requests open until ``stop``; returns [connections the server closed]."""
    closed, held = [0], []

    def loop():
        while not stop.is_set():
            while len(held) < n and not stop.is_set():
                try:
                    s = socket.create_connection((host, port), timeout=5)
                    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                    s.setblocking(False)
                    held.append(s)
                except OSError:
                    closed[0] += 1
            for s in list(held):
                try:
                    s.recv(4096)  # a 408 or a 503, or the close: the server is done with it
                except BlockingIOError:
                    continue  # still held
                except OSError:
                    pass
                held.remove(s)
                s.close()
                closed[0] += 1
            time.sleep(0.05)
        for s in held:
            s.close()

    threading.Thread(target=loop, daemon=True).start()
    return closed


def post(host: str, port: int, png: bytes) -> tuple[float, int]:
    """(seconds, status) of one POST of ``png`` on its own connection."""
    conn, start = http.client.HTTPConnection(host, port, timeout=120), time.perf_counter()
    conn.request("POST", "/api/predict", body=png, headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return time.perf_counter() - start, response.status


def burst(host: str, port: int, n: int, drawing_png: bytes) -> None:
    """``n`` uploads of a noisy 2048×2048 PNG at once, and one drawing 0.5 s after them."""
    ink = np.full((2048, 2048), 250, np.uint8) - np.random.default_rng(0).integers(0, 6, (2048, 2048), np.uint8)
    ink[500:1500, 900:1100] = 0
    out = io.BytesIO()
    Image.fromarray(ink).save(out, format="PNG", compress_level=1)
    with ThreadPoolExecutor(n + 1) as pool:
        large = [pool.submit(post, host, port, out.getvalue()) for _ in range(n)]
        time.sleep(0.5)
        seconds, status = post(host, port, drawing_png)
        answers = [f.result() for f in large]
    served = [t for t, code in answers if code == 200]
    busy = [t for t, code in answers if code == 503]
    print(f"{n} uploads of 2048×2048 at once: {len(served)} answered 200 (longest wait {max(served, default=0):.1f} s),"
          f" {len(busy)} answered 503 (longest {max(busy, default=0) * 1000:.0f} ms); "
          f"a drawing sent 0.5 s later: {status} in {seconds * 1000:.0f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="checkpoints/gpumlp-784-256-10-relu-ce.npz")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--stalled", type=int, default=0, help="slowloris connections held during the runs")
    parser.add_argument("--burst", type=int, default=0, help="then this many 2048×2048 uploads at once")
    args = parser.parse_args()
    _, _, X, _ = load_mnist()
    pngs = [drawing(X[i % len(X)]) for i in range(args.requests)]
    cmd = [sys.executable, "-m", "gpumlp", "serve", args.checkpoint, "--port", "0", "--header-timeout", "2"]
    server, stop = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True), threading.Event()
    try:
        line = server.stderr.readline()
        url = urlparse(re.search(r"(http://\S+/)", line).group(1))
        shed = stall(url.hostname, url.port, args.stalled, stop) if args.stalled else None
        time.sleep(1.0 if args.stalled else 0)
        timed_posts(url.hostname, url.port, pngs[:20])  # warm-up
        one = np.array(timed_posts(url.hostname, url.port, pngs)) * 1000
        print(f"{args.checkpoint}: {len(pngs)} PNGs of {np.mean([len(p) for p in pngs]) / 1024:.1f} kB, 280×280")
        print(f"one at a time: median {np.median(one):.2f} ms, p95 {np.percentile(one, 95):.2f} ms")
        threads = 8
        start = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(lambda k: timed_posts(url.hostname, url.port, pngs[k::threads]), range(threads)))
        wall = time.perf_counter() - start
        many = np.concatenate(parts) * 1000
        print(f"{threads} clients at once: median {np.median(many):.2f} ms, p95 {np.percentile(many, 95):.2f} ms, "
              f"{len(pngs) / wall:.0f} requests/s")  # fmt: skip
        if shed is not None:
            print(f"while {args.stalled} stalled connections were held: the server closed {shed[0]} of them")
        if args.burst:
            burst(url.hostname, url.port, args.burst, pngs[0])
    finally:
        stop.set()
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
