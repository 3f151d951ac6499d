"""Published checkpoints in: one importer per layout, each writing a groundlm model directory.

The contract of an importer (a plain function in `IMPORTERS`, one module per layout):

    def import_KIND(src: Path, out: Path, **options) -> None

- reads the checkpoint at `src` (a directory or a file, as the layout ships) and writes to `out` a groundlm
  model directory: what `save_pretrained` of the model and of the processor write (safetensors weights,
  config.json, generation_config.json, tokenizer files, groundlm_processor.json), so `groundlm.load(out)`
  and a recipe's `init_from: out` read it. `directory.write_model` writes one from a config, a state dict
  and a processor;
- maps every key strictly (`keys.match_weights`): unknown, missing or mis-shaped keys raise `WeightsError`
  naming them; what groundlm cannot compute with the same logits is refused with the reason;
- raises `keys.WrongKind` when `src` is not in its layout; `import_model` then says what `src` looks like,
  asking each entry of `SIGNATURES` (KIND -> `looks_like(src) -> bool`);
- takes its settings as keyword-only `options` with defaults (template, frame, location codec, ...); an
  unknown option is an error naming the valid ones (`import_model` checks the signature first);
- never downloads and never unpickles anything but tensors (`torch.load(weights_only=True)`).

`groundlm import KIND SRC --out DIR` (cli.py) and `init_from: {kind: KIND, path: SRC}` in a recipe
(`train/build.py`) both go through `import_model`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .keys import WeightsError, WrongKind, read_json
from .llava import import_llava
from .llava import looks_like as looks_like_llava
from .llava_hf import import_llava_hf
from .llava_hf import looks_like as looks_like_llava_hf
from .minigpt import import_minigpt4, import_minigptv2
from .nextchat import import_nextchat
from .nextchat import looks_like as looks_like_nextchat

# KIND -> importer. Add a layout by adding its module and one entry here (and one in SIGNATURES).
IMPORTERS: dict[str, Callable[..., None]] = {
    "llava-hf": import_llava_hf,
    "llava": import_llava,
    "minigptv2": import_minigptv2,  # the released .pth; options eva=, llm= (and merge_lora=)
    "minigpt4": import_minigpt4,  # the released .pth; options eva=, llm=, qformer=
    "nextchat": import_nextchat,
}

# The `kind` of a groundlm model directory itself (init_from reads it directly, no import).
GROUNDLM = "groundlm"


def looks_like_groundlm(src: Path) -> bool:
    """A directory whose config.json says `model_type: groundlm`."""
    config = src / "config.json"
    try:
        return config.is_file() and read_json(config).get("model_type") == GROUNDLM
    except WeightsError:
        return False


# KIND -> whether a source looks like that layout: what a wrong KIND is told instead.
SIGNATURES: dict[str, Callable[[Path], bool]] = {
    GROUNDLM: looks_like_groundlm,
    "llava-hf": looks_like_llava_hf,
    "llava": looks_like_llava,
    "nextchat": looks_like_nextchat,
}


def looks_like(src: Path) -> list[str]:
    """The kinds whose signature `src` fits."""
    return [kind for kind, fits in SIGNATURES.items() if fits(src)]


def _wrong_kind(kind: str, src: Path, reason: str) -> WeightsError:
    kinds = [k for k in looks_like(src) if k != kind]
    if GROUNDLM in kinds:
        hint = "it is already a groundlm model directory: load it directly (groundlm.load, init_from: DIR)"
    elif kinds:
        hint = f"this looks like a {kinds[0]} checkpoint, use KIND {kinds[0]}"
    else:
        hint = f"it looks like none of the known layouts ({', '.join(IMPORTERS)})"
    return WeightsError(f"{reason}; {hint}")


def import_model(kind: str, src: str | Path, out: str | Path, **options: Any) -> Path:
    """Run importer `kind` on `src`, writing a groundlm model directory to `out`; returns `out`."""
    src, out = Path(src), Path(out)
    if kind not in IMPORTERS:
        raise WeightsError(f"unknown KIND {kind!r}; choose one of {', '.join(IMPORTERS)}")
    if not src.exists():
        raise WeightsError(f"{src} does not exist")
    importer = IMPORTERS[kind]
    params = inspect.signature(importer).parameters
    valid = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise WeightsError(f"{kind}: unknown option(s) {unknown}; valid: {valid}")
    fits = SIGNATURES.get(kind)
    if fits is not None and not fits(src):
        raise _wrong_kind(kind, src, f"{src} is not a {kind} checkpoint")
    try:
        importer(src, out, **options)
    except WrongKind as err:
        raise _wrong_kind(kind, src, str(err)) from err
    return out


# The option a family checkpoint takes in `init_from` (backends.load_for_training): a tiny random model of its
# architecture with its own tokenizer and processor, what a dry run trains.
FAMILY_OPTIONS = ("tiny",)


def init_source(value) -> Any:
    """A `presets.InitFrom` from a recipe's `init_from`: an InitFrom, `PATH` (a groundlm model directory) or
    `KIND:PATH` (KIND a name in IMPORTERS, or a family of `backends.TRAINABLE`, whose checkpoint is trained
    as it is, in its own layout); a ValueError names an unknown kind."""
    from ..backends import TRAINABLE
    from ..presets import InitFrom

    kinds = [GROUNDLM, *IMPORTERS, *TRAINABLE]
    if isinstance(value, str):
        kind, sep, rest = value.partition(":")
        value = InitFrom(path=rest, kind=kind) if sep and kind in kinds[1:] else InitFrom(path=value)
    if value.kind not in kinds:
        raise ValueError(f"init_from.kind: {value.kind!r} is not one of {kinds}")
    if value.kind == GROUNDLM and value.options:
        raise ValueError("init_from.options: a groundlm model directory takes no options")
    if value.kind in TRAINABLE:
        unknown = sorted(set(value.options) - set(FAMILY_OPTIONS))
        if unknown or not all(isinstance(v, bool) for v in value.options.values()):
            raise ValueError(
                f"init_from.options: a {value.kind} checkpoint takes only {list(FAMILY_OPTIONS)} (true or false), "
                f"got {value.options}"
            )
    return value


__all__ = [
    "GROUNDLM",
    "IMPORTERS",
    "SIGNATURES",
    "WeightsError",
    "WrongKind",
    "import_model",
    "init_source",
    "looks_like",
]
