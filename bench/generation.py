"""Batch generation: `GroundLM.ask_many` against transformers' LLaVA generating one prompt at a time.

Both sides hold the same weights (`groundlm.export.to_llava`), see the same ShapesWorld test prompts and
decode greedily, so their answers must be identical; the benchmark checks that, then prints samples/s and
the ratio. It also times the prefill of `concat4` (MiniGPT-v2's 4× fewer image tokens) against no merge.

    .venv/bin/python bench/generation.py [--size tiny|base] [--n 64] [--batch-size 16] [--threads 2]

Run it alone: a second busy process on two cores makes torch 3–4× slower.
"""

from __future__ import annotations

import argparse
import time

import torch

from groundlm.data.shapes import scene_at, scene_records
from groundlm.export import to_llava
from groundlm.inference import GroundLM
from groundlm.presets import ModelSpec, build_model

SIZES = {
    # the demo's scale, and a ~100M-parameter configuration (as the performance issue asks)
    "tiny": ModelSpec(image_size=64, patch_size=8, vision_hidden=64, vision_layers=2, text_hidden=128, text_layers=2),
    "base": ModelSpec(image_size=224, patch_size=14, vision_hidden=384, vision_layers=6, text_hidden=768,
                   text_layers=10, heads=12),
}


def prompts(n: int) -> list[tuple]:
    """(image, prompt, boxes) of the first `n` ShapesWorld test records, across all tasks."""
    out = []
    i = 0
    while len(out) < n:
        scene = scene_at("test", i)
        for r in scene_records(scene, "test", i):
            out.append((scene.image, r.messages[0].content, [o.box for o in r.objects]))
        i += 1
    return out[:n]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    preset = SIZES[args.size]
    model, processor = build_model(ModelSpec(**{**preset.__dict__, "connector": "mlp2x_gelu"}), seed=0)
    lm = GroundLM(model, processor)
    llava = to_llava(model)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    work = prompts(args.n)
    print(f"size {args.size}: {params:.1f}M parameters, {processor.config.num_image_tokens} image tokens, "
          f"{len(work)} prompts, {torch.get_num_threads()} threads, torch {torch.__version__}")

    def baseline() -> list[str]:
        texts = []
        for image, prompt, boxes in work:
            enc = processor.prompt(image, [{"role": "user", "content": prompt}], boxes)
            batch = processor.pad([enc])
            batch.pop("labels")
            out = llava.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 eos_token_id=processor.stop_token_id, pad_token_id=processor.tokenizer.pad_token_id)
            texts.append(processor.decode(out[0, batch["input_ids"].shape[1] :].tolist()))
        return texts

    def ours() -> list[str]:
        answers = lm.ask_many([w[0] for w in work], [w[1] for w in work], boxes=[w[2] for w in work],
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        return [a.text for a in answers]

    with torch.inference_mode():
        ours()  # warm-up (allocator, kernels)
        t_base, base_texts = timed(baseline)
        t_ours, our_texts = timed(ours)
    same = sum(a == b for a, b in zip(base_texts, our_texts, strict=True))
    print(f"baseline (LLaVA, one at a time): {len(work) / t_base:8.1f} samples/s")
    print(f"groundlm ask_many (batch {args.batch_size}):  {len(work) / t_ours:8.1f} samples/s")
    print(f"ratio: {t_base / t_ours:.2f}x   identical answers: {same}/{len(work)}")

    # Prefill: concat4 folds 4 sequence-adjacent image tokens into one (MiniGPT-v2).
    rows = []
    for connector in ("mlp2x_gelu", "concat4"):
        m, p = build_model(ModelSpec(**{**preset.__dict__, "connector": connector}), seed=0)
        encs = [p.prompt(w[0], [{"role": "user", "content": w[1]}], w[2]) for w in work[: args.batch_size]]
        batch = p.pad(encs)
        batch.pop("labels")
        with torch.inference_mode():
            m(**batch)
            t, _ = timed(lambda m=m, batch=batch: [m(**batch) for _ in range(3)])
        rows.append((connector, p.config.num_image_tokens, batch["input_ids"].shape[1], t / 3))
    for connector, n_img, length, t in rows:
        print(f"prefill {connector:<10} {n_img:4d} image tokens, {length:4d} tokens/prompt: {t * 1e3:8.1f} ms/batch")
    print(f"prefill ratio no-merge / concat4: {rows[0][3] / rows[1][3]:.2f}x")


if __name__ == "__main__":
    main()
