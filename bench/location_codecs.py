"""The three location codecs on ShapesWorld with the same data, model size and training budget.

For each codec (`text` MiniGPT-v2 `{<x1><y1><x2><y2>}`, `tokens` `<loc_k>` x4, `embedding` NExT-Chat's
trigger + box decoder) it trains the `shapes` recipe (the demo model and stages, only the codec changed, every
codec with random coordinate-token rows so none starts with a head start), then reports on the fixed test split:

- REC Acc@0.5 (`refer`), `[identify]` accuracy, grounded-caption F1 (`grounding`), detection F1;
- RES cIoU (embedding codec only: after the shared budget, one extra stage trains only the mask decoder on
  segmentation records; the language model is frozen there, so the grounding numbers are unaffected);
- output tokens per box (tokenised reference answers of the REC records);
- training throughput (samples/s of the task stage, from metrics.jsonl) and generation throughput
  (`ask_many` on the REC prompts, samples/s).

    .venv/bin/python bench/location_codecs.py --out runs/codecs [--codecs text,tokens,embedding]
        [--steps N | --scale F] [--scenes 200] [--threads 2]

It writes `runs/codecs/<codec>/` (the training run and its evaluation) and prints a Markdown table for
docs/location-codecs.md. A full run is three trainings of the whole recipe (~27 min each on two AVX2-only
cores in fp32); `--scale F` gives every stage F of its steps, `--steps` a fixed count for a smoke run (the
numbers are then meaningless). `--speeds-only` re-measures the two throughputs of finished codecs: run it
alone, since the training logs are only as quiet as the machine was.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from groundlm.data.shapes import ShapesConfig, scene_at, scene_records
from groundlm.demo.calibrate import measure_speeds
from groundlm.evaluate.runner import EvalConfig, evaluate
from groundlm.evaluate.segmentation import segmentation_scores
from groundlm.inference import GroundLM, load
from groundlm.masks import decode_mask
from groundlm.train import load_recipe, train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import ShapesSpec, SourceSpec, override_steps

CODECS = ("text", "tokens", "embedding")


def codec_recipe(codec: str, steps: int | None, scale: float = 1.0):
    """The `shapes` recipe with `codec`; the embedding codec gets a mask decoder and a mask-only last stage."""
    recipe = load_recipe("shapes")
    head = {"mask_decoder": True} if codec == "embedding" else None
    recipe.model = dataclasses.replace(
        recipe.model, location_codec=codec, location_head=head, coordinate_init="random"
    )
    recipe.name = f"shapes-{codec}"
    if codec == "embedding":
        last = recipe.stages[-1]
        masks = dataclasses.replace(
            last,
            name="masks",
            train={"location_heads.mask_decoder": 1.0e-3},
            data=[SourceSpec(name="segmentation", ratio=1, shapes=ShapesSpec(tasks=["segmentation"],
                                                                            config={"image_size": 64}))],
            steps=max(last.steps // 4, 1),
        )
        recipe.stages = [*recipe.stages, masks]
    if scale != 1.0:  # every stage keeps its share of the budget, as `groundlm demo --minutes` does
        recipe.stages = [
            dataclasses.replace(s, steps=max(2, round(s.steps * scale)),
                                warmup_steps=round((s.warmup_steps or 0) * scale))
            for s in recipe.stages
        ]
    return override_steps(recipe, steps) if steps else recipe


def tokens_per_box(lm: GroundLM, scenes: int) -> float:
    """Mean sequence tokens of one output box (the REC answers, whose reference is one `<box:i>` slot).

    Counted in the sequence, not in the loss: the embedding codec's `<boxes>` is a forced step, not a target,
    but it still costs a decoding step.
    """
    counts = []
    for i in range(scenes):
        scene = scene_at("test", i)
        for record in scene_records(scene, "test", i, ["refer"]):
            _, frame = lm.processor.transform(scene.image)
            boxes = [o.box for o in record.objects]
            text = lm.processor.render_locations(record.messages[1].content, boxes, frame, output=True)
            counts.append(len(lm.processor.tokenizer(text, add_special_tokens=False)["input_ids"]))
    return float(np.mean(counts))


def generation_speed(lm: GroundLM, scenes: int, batch_size: int = 16) -> float:
    """Samples/s of `ask_many` on the REC prompts of the test split."""
    images, prompts = [], []
    for i in range(scenes):
        scene = scene_at("test", i)
        for record in scene_records(scene, "test", i, ["refer"]):
            images.append(scene.image)
            prompts.append(record.messages[0].content)
    start = time.perf_counter()
    lm.ask_many(images, prompts, max_new_tokens=24, batch_size=batch_size)
    return len(prompts) / (time.perf_counter() - start)


def res_ciou(lm: GroundLM, scenes: int) -> float | None:
    """RES cIoU on the test split's segmentation records (None when the model predicts no masks)."""
    if lm.model.location_heads is None or lm.model.location_heads.mask_decoder is None:
        return None
    preds, targets = [], []
    for i in range(scenes):
        scene = scene_at("test", i)
        for record in scene_records(scene, "test", i, ["segmentation"]):
            answer = lm.ask(scene.image, record.messages[0].content, max_new_tokens=24)
            h, w = scene.image.height, scene.image.width
            mask = answer.objects[0].mask if answer.objects else None
            preds.append(decode_mask(mask, h, w) if mask is not None else None)
            targets.append(decode_mask(record.objects[record.meta["target"]].mask, h, w))
    return segmentation_scores(preds, targets).ciou


def remeasure_speeds(codec: str, out: Path) -> dict:
    """Training (PROBE_STEPS of the task stage, calibrate.py) and generation samples/s of a finished codec,
    written into its codec_summary.json: the training run's own log is only as quiet as the machine was."""
    row = json.loads((out / "codec_summary.json").read_text())
    recipe = codec_recipe(codec, None)
    recipe.stages = [s for s in recipe.stages if s.name == "tasks"]
    row["train_samples_per_s"] = measure_speeds(recipe)["tasks"]
    row["generate_samples_per_s"] = generation_speed(load(out / "model"), 50)
    (out / "codec_summary.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/codecs"))
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--steps", type=int, default=None, help="override every stage's steps (smoke runs)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps (a smaller budget)")
    parser.add_argument("--scenes", type=int, default=200, help="test scenes to evaluate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--speeds-only", action="store_true",
        help="re-measure only the two throughputs of finished codecs, alone on a quiet machine",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ShapesConfig()  # the default world: every codec sees the same scenes

    rows = []
    for codec in args.codecs.split(","):
        out = args.out / codec
        model_dir = out / "model"
        if args.speeds_only:
            rows.append(remeasure_speeds(codec, out))
            continue
        if not model_dir.is_dir():
            train(codec_recipe(codec, args.steps, args.scale), out, progress=True)
        lm = load(model_dir)
        metrics = evaluate(lm, out / "eval", EvalConfig(benchmark="shapes", scenes=args.scenes))
        speed = [r["samples_per_s"] for r in read_metrics(out / "metrics.jsonl") if r["stage"] == "tasks"]
        row = {
            "codec": codec,
            "rec_acc": metrics["refer"]["score"],
            "identify_acc": metrics["identify"]["score"],
            "grounding_f1": metrics["grounding"]["score"],
            "detection_f1": metrics["detection"]["score"],
            "res_ciou": res_ciou(lm, args.scenes),
            "tokens_per_box": tokens_per_box(lm, min(args.scenes, 50)),
            "train_samples_per_s": float(np.median(speed)) if speed else None,
            "generate_samples_per_s": generation_speed(lm, min(args.scenes, 50)),
        }
        (out / "codec_summary.json").write_text(json.dumps(row, indent=2) + "\n")
        rows.append(row)

    def fmt(v):
        return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(fmt(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
