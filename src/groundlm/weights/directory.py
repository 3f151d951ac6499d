"""A groundlm model directory, written by an importer and read back strictly.

A model directory is what `groundlm.load` reads and `save_pretrained` writes: the weights as safetensors
(sharded above 5 GB, with an index), `config.json` (`GroundLMConfig`), `generation_config.json`, the
tokenizer files and `groundlm_processor.json` (`ProcessorConfig`). Importers have a state dict, a config
and a tokenizer, never a model in memory: `write_model` saves them as they are, and `load_model` reads a
directory with every key checked (transformers' `from_pretrained` alone would fill a missing weight with
random values and only warn).
"""

from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from transformers import GenerationConfig

from ..modeling import GroundLMConfig, GroundLMForConditionalGeneration
from ..processor import GroundLMProcessor, ProcessorConfig
from .keys import WeightsError, check_tied, expected_weights, names


def make_processor(
    tokenizer, config: GroundLMConfig, *, template: str, mean, std, location_codec: str = "text",
    location_bins: int = 100,
) -> GroundLMProcessor:
    """The processor of an imported model: the image side follows `config` (size, frame, token count)."""
    settings = ProcessorConfig(
        template=template,
        image_size=config.image_size,
        frame=config.frame,
        num_image_tokens=config.num_image_tokens,
        image_token=config.image_token,
        location_bins=location_bins,
        location_codec=location_codec,
        mean=tuple(mean),
        std=tuple(std),
    )
    return GroundLMProcessor(tokenizer, settings)


def write_model(
    out: Path, config: GroundLMConfig, weights: dict[str, torch.Tensor], processor: GroundLMProcessor
) -> None:
    """Write a groundlm model directory: `weights` must be exactly what `config`'s model holds (tied copies
    may be left out), which is checked again here so no importer can write a model that loads partly."""
    shapes, tied = expected_weights(config)
    weights = check_tied(weights, tied, str(out))
    missing = set(shapes) - set(tied) - set(weights)
    unknown = set(weights) - set(shapes)
    if missing or unknown:
        raise WeightsError(f"{out}: refusing to write; missing {names(missing)}; unknown {names(unknown)}")
    out.mkdir(parents=True, exist_ok=True)
    dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        config.dtype = str(next(iter(dtypes))).removeprefix("torch.")  # what from_pretrained loads by default
    config.save_pretrained(out)
    save_torch_state_dict(
        {k: v.contiguous() for k, v in weights.items()}, out, max_shard_size="5GB", metadata={"format": "pt"}
    )
    tokenizer = processor.tokenizer
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=processor.stop_token_id or tokenizer.eos_token_id,
    ).save_pretrained(out)
    processor.save_pretrained(out)


def load_model(
    directory: Path, *, dtype: torch.dtype | None = None
) -> tuple[GroundLMForConditionalGeneration, GroundLMProcessor]:
    """A groundlm model directory's model and processor; any missing, unexpected or mis-shaped weight is a
    WeightsError naming it."""
    if not (directory / "config.json").is_file():
        raise WeightsError(f"{directory}: no config.json; not a groundlm model directory")
    model, info = GroundLMForConditionalGeneration.from_pretrained(
        directory, local_files_only=True, dtype=dtype, output_loading_info=True
    )
    problems = {
        what: info.get(what) for what in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(what)
    }
    if problems:
        listed = "; ".join(f"{what.replace('_', ' ')}: {names(map(str, keys))}" for what, keys in problems.items())
        raise WeightsError(f"{directory}: the weights do not fit config.json: {listed}")
    return model.eval(), GroundLMProcessor.from_pretrained(directory)


__all__ = ["load_model", "make_processor", "write_model"]
