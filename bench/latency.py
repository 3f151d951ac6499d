"""Latency of one `[refer]` request end to end (PNG bytes in, grounded objects out) on the demo model.

The model is `runs/demo/model` when it exists (`make demo`), else the `demo` preset with random weights
(the output says which). Each request is a ShapesWorld test scene as PNG bytes and "[refer] the <colour>
<shape>", answered greedily with at most `--max-new-tokens` tokens (a trained model stops at its end token; a
random one may stop anywhere, so the mean answer length is printed beside the times). Measured:

- `GroundLM.ask`: image decode, preprocessing, prefill, decoding, parsing the objects; p50 / p95 over N.
- `GroundLM.ask` with `max_new_tokens=1`: everything up to the first generated token, the time to first token
  a token-by-token stream could reach.
- The HTTP server (`groundlm.serve.run` in a subprocess on loopback, batching on, one client at a time): the
  same requests as OpenAI chat completions with the image as a data URL, p50 / p95; and with `stream: true`,
  the time to the first content chunk (the server streams each piece as it is decoded, serve/api.py; the
  batcher's wait for company and the prefill come before it).

    .venv/bin/python bench/latency.py [--n 50] [--threads 2] [--max-new-tokens 32]
    .venv/bin/python bench/latency.py --smoke     # 3 requests each: proves the script runs

Run it alone: latency on two shared cores moves several-fold with other work.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

import httpx
import torch
from serve_load import Server

from groundlm.data.shapes import png_bytes, scene_at
from groundlm.inference import GroundLM, load
from groundlm.presets import new_model

DEMO = Path(__file__).resolve().parents[1] / "runs" / "demo" / "model"


def requests(n: int) -> list[tuple[bytes, str]]:
    """(PNG bytes, prompt) of `n` ShapesWorld test scenes, each referring to its first object."""
    out = []
    for i in range(n):
        scene = scene_at("test", i)
        obj = scene.objects[0]
        out.append((png_bytes(scene.image), f"[refer] the {obj.colour} {obj.shape}"))
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, seconds: list[float]) -> str:
    """A Markdown row: p50 and p95 in milliseconds."""
    return f"| {name} | {len(seconds)} | {percentile(seconds, 0.5) * 1e3:.1f} | {percentile(seconds, 0.95) * 1e3:.1f} |"


def time_ask(lm: GroundLM, work: list[tuple[bytes, str]], max_new_tokens: int) -> tuple[list[float], float]:
    """Seconds per `ask` (after one warm-up request) and the answers' mean length in tokens."""
    lm.ask(work[0][0], work[0][1], max_new_tokens=max_new_tokens)
    seconds, lengths = [], []
    for image, prompt in work:
        start = time.perf_counter()
        answer = lm.ask(image, prompt, max_new_tokens=max_new_tokens)
        seconds.append(time.perf_counter() - start)
        lengths.append(len(lm.processor.tokenizer(answer.text, add_special_tokens=False)["input_ids"]))
    return seconds, sum(lengths) / len(lengths)


def body(image: bytes, prompt: str, max_tokens: int, stream: bool) -> dict:
    """An OpenAI chat completion request with the image as a data URL."""
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "stream": stream}


def time_server(url: str, work: list[tuple[bytes, str]], max_tokens: int) -> tuple[list[float], list[float]]:
    """Seconds per non-streamed request, and seconds to the first content chunk of streamed ones."""
    whole, first = [], []
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post(
            "/v1/chat/completions", json=body(*work[0], max_tokens, False)
        ).raise_for_status()  # warm-up
        for image, prompt in work:
            start = time.perf_counter()
            client.post(
                "/v1/chat/completions", json=body(image, prompt, max_tokens, False)
            ).raise_for_status()
            whole.append(time.perf_counter() - start)
        for image, prompt in work:
            start = time.perf_counter()
            with client.stream(
                "POST", "/v1/chat/completions", json=body(image, prompt, max_tokens, True)
            ) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    delta = json.loads(line[len("data: ") :])["choices"][0]["delta"]
                    if delta.get("content"):
                        first.append(time.perf_counter() - start)
                        break
    return whole, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.n = 3
    torch.set_num_threads(args.threads)
    work = requests(args.n)

    with tempfile.TemporaryDirectory(prefix="groundlm-latency-") as tmp:
        if DEMO.is_dir():
            directory, which = DEMO, f"{DEMO} (trained)"
        else:
            directory, which = new_model(Path(tmp) / "demo", "demo", seed=0), "demo preset, random weights"
        lm = load(directory)
        print(
            f"model: {which}; {sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M parameters; "
            f"max_new_tokens {args.max_new_tokens}; {args.n} requests; {args.threads} threads; "
            f"torch {torch.__version__}"
        )
        with torch.inference_mode():
            ask, mean_tokens = time_ask(lm, work, args.max_new_tokens)
            first_token, _ = time_ask(lm, work, 1)
        print(f"answers: {mean_tokens:.1f} tokens on average")
        del lm

        server = Server(directory, batch=8, wait_ms=2.0, threads=args.threads)
        try:
            server.wait_ready()
            whole, first = time_server(server.url, work, args.max_new_tokens)
        finally:
            server.stop()

    print("\n| path | requests | p50 (ms) | p95 (ms) |")
    print("|---|---:|---:|---:|")
    print(summary("GroundLM.ask, end to end", ask))
    print(summary("GroundLM.ask, up to the first token (max_new_tokens=1)", first_token))
    print(summary("HTTP server, end to end", whole))
    print(summary("HTTP server, stream: first content chunk", first))


if __name__ == "__main__":
    main()
