"""Training throughput: groundlm against transformers' LLaVA with the same weights, data, batch and steps.

The baseline is `LlavaForConditionalGeneration` (CLIP tower, `mlp2x_gelu` projector, Llama LM) holding
groundlm's weights (`groundlm.export.to_llava`), trained on plain right-padded fp32 batches with its own loss
and torch's default (unfused) AdamW. Both train the connector and the language model with the tower frozen
(LLaVA's second stage), on the same ShapesWorld batches of every task, drawn by the training loop's `Mixture`
and encoded before timing. groundlm's variants, measured in the same run, add one speed-up at a time:

    padded, eager attention         the same work as the baseline, with the attention written out
    + length-grouped                train/packing.py's `split_by_length` (the loop's `group_by_length: true`)
    packed (instead of grouped)     train/packing.py's `pack`: rows of up to 2x the longest sample
    + SDPA                          on top of the faster of grouped / packed
    + fused AdamW                   train/optim.py's `adamw`
    + bf16 autocast                 torch.autocast(cpu, bfloat16), as the loop's `precision: bf16`

Throughput is real tokens per second: image tokens + text tokens of the samples, padding excluded, over the
timed steps (one untimed warm-up step per variant first). Model FLOPs utilisation (MFU) counts the FLOPs of
the non-embedding matmuls (every nn.Linear and the tower's patch convolution; not the token embedding table,
not attention's QK^T / AV products) and compares them with a torch.mm peak measured in the same run and dtype:

    FLOPs/step = 2 * P_tower * T_tower  +  6 * (P_connector * T_image + P_lm * T_text+image)

with P_x the matmul weights of a part and T_x the tokens it processes (T_tower: patches + CLS per image;
T_image: image tokens; T_text+image: every real token): the frozen tower runs forward only (2 FLOPs per
weight and token), the trained parts forward and backward (6).

    .venv/bin/python bench/train_throughput.py [--size tiny|base] [--batch-size 8] [--steps 10] [--threads 2]
    .venv/bin/python bench/train_throughput.py --smoke     # seconds: proves the script runs, measures nothing

Run it alone: a second busy process on two cores makes torch 3-4x slower.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from generation import SIZES
from torch import nn

from groundlm.data.mixture import Mixture, Source
from groundlm.export import to_llava
from groundlm.presets import ModelSpec, build_model
from groundlm.processor import Encoded, GroundLMProcessor
from groundlm.train.objectives import lm_token_losses
from groundlm.train.optim import adamw, is_fused
from groundlm.train.packing import pack, per_sample_sums, split_by_length
from groundlm.train.recipe import ShapesSpec
from groundlm.train.sources import ShapesSource

LR = 1e-4


@dataclass(frozen=True)
class Variant:
    """One way of training groundlm's model; each field is one speed-up."""

    name: str
    attention: str = "eager"  # transformers' attn_implementation for the tower and the LM
    grouped: bool = False
    packed: bool = False
    fused: bool = False
    bf16: bool = False


@dataclass
class Result:
    """What one timed run gives."""

    name: str
    seconds: float
    tokens: int
    flops: float
    first_loss: float
    attention: str
    bf16: bool


def model_for(size: str, **overrides) -> tuple[nn.Module, GroundLMProcessor]:
    """groundlm's model of a benchmark size with the LLaVA-compatible connector (random weights, seed 0)."""
    preset = ModelSpec(**{**SIZES[size].__dict__, "connector": "mlp2x_gelu", **overrides})
    return build_model(preset, seed=0)


def step_batches(
    processor: GroundLMProcessor, steps: int, batch_size: int, seed: int = 0
) -> list[list[Encoded]]:
    """`steps` batches of ShapesWorld training samples of every task, drawn as the training loop draws them."""
    source = ShapesSource(ShapesSpec(split="train"), processor)
    mixture = Mixture([Source("shapes", len(source))], seed=seed, batch_size=batch_size)
    return [[source[i] for i in mixture.next_batch()[1]] for _ in range(steps)]


def matmul_params(module: nn.Module) -> int:
    """Weights of the matmuls in `module`: every nn.Linear and nn.Conv2d weight (no embedding tables)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear | nn.Conv2d))


def step_flops(model: nn.Module, batch: list[Encoded]) -> float:
    """Model FLOPs of one training step on `batch` (the formula of this module's docstring)."""
    config = model.config
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1  # + CLS
    images = sum(s.pixel_values is not None for s in batch)
    tokens = sum(len(s.input_ids) for s in batch)
    return (
        2 * matmul_params(model.vision_tower) * patches * images
        + 6 * matmul_params(model.connector) * config.num_image_tokens * images
        + 6 * matmul_params(model.language_model) * tokens
    )


def freeze_tower(model: nn.Module, tower: nn.Module) -> list[nn.Parameter]:
    """Freeze `tower`; returns the parameters left to train."""
    tower.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def groundlm_step(
    model: nn.Module, processor: GroundLMProcessor, variant: Variant
) -> Callable[[list[Encoded]], float]:
    """A function that trains `model` one step on a batch (forward, backward, AdamW) and returns the loss.

    The loss is the mean over the step's supervised tokens, as in the training loop, whichever way the batch
    is cut: each piece's summed token loss is divided by the step's token count before its backward.
    """
    model.set_attn_implementation(variant.attention)
    params = freeze_tower(model, model.vision_tower)
    group = [{"params": params, "lr": LR, "weight_decay": 0.0}]
    optimizer = adamw(group) if variant.fused else torch.optim.AdamW(group, foreach=False)
    assert is_fused(optimizer) == variant.fused, "fused AdamW was asked for but torch refused it"
    pad_id = processor.tokenizer.pad_token_id

    def step(samples: list[Encoded]) -> float:
        units = sum(sum(label != -100 for label in s.labels[1:]) for s in samples)
        total = 0.0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bf16):
            if variant.packed:
                lengths = [len(s.input_ids) for s in samples]
                packed = pack(samples, pad_id, row_tokens=2 * max(lengths))
                token_losses = lm_token_losses(model, packed.batch)  # [R, L-1]
                loss = per_sample_sums(token_losses, packed.owner, len(samples)).sum() / units
                loss.backward()
                total = float(loss.detach())
            else:
                batch = processor.pad(samples, side="right")
                parts = split_by_length(batch, processor.image_token_id) if variant.grouped else [None]
                for part in parts:
                    tensors = batch if part is None else part.batch
                    loss = lm_token_losses(model, tensors).sum() / units
                    loss.backward()
                    total += float(loss.detach())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total

    return step


def baseline_step(llava: nn.Module, processor: GroundLMProcessor) -> Callable[[list[Encoded]], float]:
    """A function that trains LLaVA one step on a plain right-padded batch with its own loss and AdamW."""
    params = freeze_tower(llava, llava.model.vision_tower)
    optimizer = torch.optim.AdamW([{"params": params, "lr": LR, "weight_decay": 0.0}], foreach=False)

    def step(samples: list[Encoded]) -> float:
        batch = processor.pad(samples, side="right")
        loss = llava(**batch, use_cache=False).loss  # mean over the supervised tokens
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def timed_run(
    name: str,
    step: Callable[[list[Encoded]], float],
    batches: list[list[Encoded]],
    flops: float,
    attention: str,
    bf16: bool,
) -> Result:
    """One untimed warm-up step on the first batch, then every other batch timed."""
    first_loss = step(batches[0])
    start = time.perf_counter()
    for samples in batches[1:]:
        step(samples)
    seconds = time.perf_counter() - start
    tokens = sum(len(s.input_ids) for b in batches[1:] for s in b)
    return Result(name, seconds, tokens, flops, first_loss, attention, bf16)


def matmul_peak(dtype: torch.dtype, n: int, seconds: float) -> float:
    """FLOP/s of a torch.mm loop of n x n matrices in `dtype`, run for about `seconds`."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * n**3 * count / elapsed


def cpu_flags() -> str:
    """The AVX-512 and AMX flags of /proc/cpuinfo (empty elsewhere): whether bf16 matmuls are native."""
    try:
        with open("/proc/cpuinfo") as f:
            words = f.read().split()
    except OSError:
        return ""
    return " ".join(sorted({w for w in words if w.startswith(("avx512", "amx"))}))


def attention_of(model: nn.Module) -> str:
    """The attention implementations transformers actually set: tower / language model."""
    config = model.config
    vision = getattr(config, "vision_config", None)
    text = getattr(config, "text_config", None)
    return f"{vision._attn_implementation}/{text._attn_implementation}"


def variants(best_cut: Variant | None) -> list[Variant]:
    """The cumulative variants: the first three always; the rest build on `best_cut` once it is known."""
    first = [
        Variant("groundlm padded, eager"),
        Variant("+ length-grouped", grouped=True),
        Variant("packed (instead of grouped)", packed=True),
    ]
    if best_cut is None:
        return first
    sdpa = replace(best_cut, name=f"+ SDPA ({'packed' if best_cut.packed else 'grouped'})", attention="sdpa")
    fused = replace(sdpa, name="+ fused AdamW", fused=True)
    return [replace(sdpa), fused, replace(fused, name="+ bf16 autocast", bf16=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (plus one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny size, 2 steps, short peak: proves it runs")
    parser.add_argument(
        "--force-bf16", action="store_true", help="run bf16 autocast even where it is emulated"
    )
    args = parser.parse_args()
    if args.smoke:
        args.size, args.steps, args.batch_size = "tiny", 2, 4
    torch.set_num_threads(args.threads)

    model, processor = model_for(args.size)
    batches = step_batches(processor, args.steps + 1, args.batch_size)
    flops = sum(step_flops(model, b) for b in batches[1:])
    lengths = [len(s.input_ids) for b in batches for s in b]
    padded = sum(max(len(s.input_ids) for s in b) * len(b) for b in batches)
    print(
        f"size {args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
        f"{processor.config.num_image_tokens} image tokens; batch {args.batch_size}, {args.steps} timed steps; "
        f"sample lengths {min(lengths)}-{max(lengths)} (padding {1 - sum(lengths) / padded:.0%} of padded "
        f"batches); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"CPU flags: {cpu_flags() or 'none of avx512* / amx*'}")
    # A short probe first: without native bf16 (AVX512_BF16 or AMX) a bf16 matmul is emulated and tens of
    # times slower than fp32, and one 2048^2 product alone would take half a minute.
    probe = {False: matmul_peak(torch.float32, 512, 0.2), True: matmul_peak(torch.bfloat16, 512, 0.2)}
    bf16_usable = args.force_bf16 or probe[True] >= probe[False]
    n, seconds = (512, 0.2) if args.smoke else (2048, 3.0)
    peak = dict(probe)
    if not args.smoke:
        peak = {False: matmul_peak(torch.float32, n, seconds)}
        peak[True] = matmul_peak(torch.bfloat16, n, seconds) if bf16_usable else probe[True]
    print(
        f"torch.mm peak: fp32 {peak[False] / 1e9:.1f} GFLOP/s ({n}^2), bf16 {peak[True] / 1e9:.1f} GFLOP/s "
        f"({n if bf16_usable else 512}^2)"
    )
    if not bf16_usable:
        print(
            "bf16 matmul is slower than fp32 on this CPU (emulated): the bf16 autocast run is skipped "
            "(--force-bf16 runs it anyway)"
        )

    llava = to_llava(model).train()
    results = [
        timed_run(
            "baseline: LLaVA padded",
            baseline_step(llava, processor),
            batches,
            flops,
            attention_of(llava),
            False,
        )
    ]
    del llava

    def measure(variant: Variant) -> Result:
        ours = copy.deepcopy(model).train()
        step = groundlm_step(ours, processor, variant)
        return timed_run(variant.name, step, batches, flops, attention_of(ours), variant.bf16)

    first = variants(None)
    measured = [measure(v) for v in first]
    best_cut = first[1] if measured[1].seconds <= measured[2].seconds else first[2]
    measured += [measure(v) for v in variants(best_cut) if bf16_usable or not v.bf16]
    results += measured

    base = results[0]
    print("\n| run | attention (tower/LM) | tokens/s | x baseline | MFU | first-step loss |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        speed = r.tokens / r.seconds
        mfu = r.flops / r.seconds / peak[r.bf16]
        print(
            f"| {r.name} | {r.attention}{' bf16' if r.bf16 else ''} | {speed:.0f} | "
            f"{base.seconds / r.seconds:.2f} | {mfu:.0%} | {r.first_loss:.5f} |"
        )
    print(
        "\nMFU against the torch.mm peak of the run's dtype (bf16 rows: the bf16 peak). First-step losses of "
        "the fp32 rows match the baseline's when every variant trains the same thing."
    )


if __name__ == "__main__":
    main()
