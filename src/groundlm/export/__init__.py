"""Export a groundlm model directory for runtimes that do not know groundlm (`groundlm export MODEL OUT`).

One module per format; `EXPORT_FORMATS` maps each format's name to the function that writes it. Today there
is one, `llava-hf` (`llava_hf.py`): transformers' `LlavaForConditionalGeneration` directory, which
transformers, vLLM and SGLang serve with the same logits, prompt and pixels as groundlm. A model a format
cannot express exactly is refused with the reasons (`ExportRefused`), never written with other logits.
"""

from __future__ import annotations

from pathlib import Path

from .llava_hf import ExportRefused, export_llava_hf, llava_config, llava_key, refusals, to_llava

EXPORT_FORMATS = {"llava-hf": export_llava_hf}


def export_model(model_dir: str | Path, out: str | Path, format: str = "llava-hf") -> Path:
    """Load the groundlm model directory `model_dir` and write it to `out` in `format`."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    from ..inference import load

    lm = load(model_dir, device="cpu")  # weights are only read and written: no GPU needed
    return EXPORT_FORMATS[format](lm.model, lm.processor, out)


__all__ = [
    "EXPORT_FORMATS",
    "ExportRefused",
    "export_llava_hf",
    "export_model",
    "llava_config",
    "llava_key",
    "refusals",
    "to_llava",
]
