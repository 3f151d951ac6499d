"""Load on the server over loopback: N requests at concurrency C, batched versus unbatched.

    .venv/bin/python bench/serve_load.py                       # a random tiny model, 200 requests, 16 at once
    .venv/bin/python bench/serve_load.py --model runs/demo/model --requests 400 --concurrency 32

For each setting it starts `groundlm.serve.run` in a subprocess on 127.0.0.1 (API only, no page), sends a few
warm-up requests, then N chat requests with ShapesWorld test images as data URLs from C concurrent clients,
and prints errors, p50/p95 latency, requests/s and the mean batch size the server formed. "unbatched" is the
same server with `max_batch_size=1`. Every loop is bounded (N requests, a timeout per request, a deadline for
the server to start), and the server is stopped at the end. Run it alone: other torch processes on the same
cores change the figures several-fold.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HOST = "127.0.0.1"  # loopback only: this script never sends traffic anywhere else


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _bodies(n: int, max_tokens: int) -> list[dict]:
    """Chat requests about ShapesWorld test scenes, one referring question each."""
    from groundlm.data.shapes import png_bytes, scene_at

    bodies = []
    for i in range(n):
        scene = scene_at("test", i % 50)
        obj = scene.objects[0]
        url = "data:image/png;base64," + base64.b64encode(png_bytes(scene.image)).decode()
        bodies.append({
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": f"[refer] the {obj.colour} {obj.shape}"},
            ]}],
            "max_tokens": max_tokens,
        })
    return bodies


class Server:
    """`groundlm.serve.run` in a subprocess on loopback."""

    def __init__(self, model: Path, batch: int, wait_ms: float, threads: int):
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        code = (
            f"import torch; torch.set_num_threads({threads})\n"
            "from groundlm.serve import Limits, run\n"
            f"run({str(model)!r}, host={HOST!r}, port={self.port}, ui=False, num_threads={threads}, "
            f"log_level='warning', "
            f"limits=Limits(max_batch_size={batch}, max_wait_ms={wait_ms}, max_queue=256))\n"
        )
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env)

    def wait_ready(self, timeout: float = 120) -> None:
        """Poll `/health` until the server answers (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited during start-up")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the server did not start within {timeout:.0f} s")

    def stop(self) -> None:
        """Terminate the server (kill it if it does not stop within 15 s)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _load(
    url: str, bodies: list[dict], concurrency: int, timeout: float,
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json=body)
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:120]}")
                    else:
                        latencies.append(time.perf_counter() - started)
                except httpx.HTTPError as err:
                    errors.append(f"{type(err).__name__}: {err}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench(model: Path, label: str, batch: int, args) -> dict:
    """Start a server with `max_batch_size=batch`, warm it up, load it, stop it; return its figures."""
    server = Server(model, batch, args.max_wait_ms, args.threads)
    try:
        server.wait_ready()
        asyncio.run(_load(server.url, _bodies(4, args.max_tokens), 2, args.timeout))  # warm-up
        before = httpx.get(server.url + "/health").json()["queue"]
        latencies, errors, wall = asyncio.run(
            _load(server.url, _bodies(args.requests, args.max_tokens), args.concurrency, args.timeout))
        after = httpx.get(server.url + "/health").json()["queue"]
    finally:
        server.stop()
    batches = after["batches"] - before["batches"]
    result = {
        "setting": label, "requests": args.requests, "errors": len(errors),
        "p50_ms": 1000 * _percentile(latencies, 0.5), "p95_ms": 1000 * _percentile(latencies, 0.95),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        "req_per_s": len(latencies) / wall,
        "mean_batch": (after["requests"] - before["requests"]) / max(1, batches),
    }
    for e in errors[:5]:
        print(f"  error: {e}")
    return result


def main() -> None:
    """Parse the options, run both settings, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model directory (default: a random tiny model)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="groundlm-bench-") as tmp:
        model = args.model
        if model is None:
            from groundlm.presets import new_model

            model = new_model(Path(tmp) / "tiny", "tiny", seed=0)
        print(f"{args.requests} requests, concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
              f"server torch threads {args.threads}, model {model if args.model else 'tiny (random)'}")
        rows = [bench(model, f"batched (max {args.max_batch_size})", args.max_batch_size, args),
                bench(model, "unbatched (max 1)", 1, args)]
    print(f"\n{'setting':<20} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} {'req/s':>7} {'mean batch':>10}")
    for r in rows:
        print(f"{r['setting']:<20} {r['errors']:>6} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['req_per_s']:>7.1f} {r['mean_batch']:>10.2f}")
    print(f"\nthroughput batched / unbatched: {rows[0]['req_per_s'] / rows[1]['req_per_s']:.2f}x")
    if any(r["errors"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
