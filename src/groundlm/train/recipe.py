"""Training recipes: typed dataclasses, loaded from YAML with errors that name the file and the field.

A recipe is a model spec (`presets.ModelSpec`), a seed and a list of stages. Every stage says which modules
train and at what learning rate, the data mixture, the schedule and the numerics. `stage_defaults` in the YAML
are merged under every stage, so a three-stage recipe states shared settings once, and a model's `preset`
(`presets.PRESETS`) is merged under its own fields the same way. `resolve()` fills every default (warmup from
`warmup_ratio`, `grad_accum` from `global_batch`), and the resolved recipe, every model field included, is
what is saved beside every checkpoint and compared on `--resume`.

    name: shapes
    seed: 0
    model: {preset: tiny}
    stages:
      - name: sft
        train: {vision_tower: 1.0e-3, connector: 1.0e-3, language_model: 1.0e-3}
        data:
          - {name: shapes, ratio: 1, shapes: {split: train, tasks: [caption, vqa, refer]}}
        steps: 300
        batch_size: 16

Paths in `records`/`image_root` and local model paths are taken relative to the working directory, after
expanding `~` and environment variables (`$DATA/coco.jsonl`).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..data.shapes import SHAPES_TASKS, ShapesConfig
from ..geometry import FRAMES
from ..location import CODEC_NAMES, make_codec
from ..modeling.connector import CONNECTORS
from ..modeling.location_heads import LocationHeadConfig
from ..modeling.positions import COORDINATE_INITS, IMAGE_POSITION_EMBEDDINGS
from ..presets import PRESETS, PRETRAINED_ONLY, SCRATCH_ONLY, SIZES, ModelSpec, field_default, get_preset
from ..templates import TEMPLATES
from .build import DTYPES, WORD_LISTS
from .precision import PRECISIONS
from .schema import RecipeError, build, expand
from .strategies import check_strategy
from .trackers import TRACKERS

# transformers' attention kernels a stage may name (`auto`: train/loop.py picks one)
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


@dataclass
class LoraSpec:
    """LoRA adapters (peft) on the language model."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lr: float = 1e-4


@dataclass
class ShapesSpec:
    """A ShapesWorld source generated on the fly: sample i is scene i // len(tasks), task i % len(tasks)."""

    split: str = "train"
    tasks: list[str] = field(default_factory=lambda: list(SHAPES_TASKS))
    scenes: int = 100_000
    eval_prompts: bool | None = None  # None: fixed prompts on val/test, pooled wording on train
    config: dict[str, Any] = field(default_factory=dict)  # ShapesConfig fields, e.g. {image_size: 64}
    # The scene written as text before the instruction, no image (data/shapes/symbolic.py): a text-only stage.
    symbolic: bool = False


@dataclass
class SourceSpec:
    """One data source of a stage's mixture and its sampling ratio."""

    name: str = ""
    ratio: float = 1.0
    shapes: ShapesSpec | None = None
    records: str | None = None  # a records JSONL file
    shards: str | None = None  # a folder of WebDataset tar shards + shards.json (`groundlm data shard`)
    image_root: str | None = None  # folder the records' image paths are relative to (default: the file's)
    on_error: str = "skip"  # a bad record: skip and count, or raise


@dataclass
class DenseSpec:
    """Settings of a `dense_patches` stage (train/dense.py): the loss weights and the tower layer it trains."""

    label_weight: float = 1.0  # per object patch: BCE over the label's words, summed over the vocabulary
    box_weight: float = 5.0  # per object patch: L1 of the owner's box, in fractions of the frame
    min_cover: float = 0.1  # a patch belongs to the object covering the largest share of it, if >= this
    feature_layer: int | None = None  # None: the layer the connector reads (config.vision_feature_layer)
    head_lr: float | None = None  # None: the largest learning rate of the stage's train map


@dataclass
class StageSpec:
    """One training stage."""

    name: str
    data: list[SourceSpec]
    train: dict[str, float] = field(default_factory=dict)  # module path -> learning rate
    objective: str = "lm"  # a name in train/objectives.py OBJECTIVES
    dense: DenseSpec | None = None  # dense_patches only (defaults filled as the recipe is read)
    template: str | None = None  # this stage's chat template (None: the model's), e.g. plain for alignment
    lora: LoraSpec | None = None
    steps: int = 100  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    global_batch: int | None = None  # if set, grad_accum = global_batch / (batch_size x processes)
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0  # used when warmup_steps is not given
    min_lr_ratio: float = 0.0  # the cosine ends at lr x min_lr_ratio
    weight_decay: float = 0.0  # on weights with >= 2 dims only (biases and norms never decay)
    max_grad_norm: float | None = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the hardware has it natively)
    # How the stage is spread over processes (train/strategies/, docs/scaling.md): ddp | fsdp | deepspeed
    strategy: str = "ddp"
    deepspeed_config: str = "zero2"  # deepspeed: zero2 | zero3 (shipped) or a JSON file ("auto"s filled)
    gradient_checkpointing: bool = False
    # Cut each micro-batch into length-grouped sub-batches (train/packing.py): less padding, same loss.
    group_by_length: bool = False
    # Padding-free: each micro-batch becomes one row of its samples, positions restarting per sample (lm only;
    # train/packing.py). Same loss; pays on GPUs with flash_attention_2, slower on a CPU (a dense L x L mask).
    packing: bool = False
    # The attention kernel (transformers' attn_implementation): auto = flash_attention_2 when the
    # flash_attn package and a GPU are there, else sdpa; or sdpa | eager | flash_attention_2.
    attn_implementation: str = "auto"
    num_workers: int = 0  # processes that build the batches ahead of the step (train/loader.py); 0: inline
    prefetch: int = 2  # batches each worker builds ahead
    # lm: Gaussian targets of this std (bins) on coordinate tokens, so near misses cost less (soft_targets.py)
    coordinate_sigma: float | None = None
    save_every: int = 0  # optimizer steps between checkpoints (0: only at the end of the stage)
    max_nonfinite: int = 5  # this many non-finite losses in a row stop the run


@dataclass
class Recipe:
    """A model, a seed and the stages that train it."""

    name: str
    model: ModelSpec
    stages: list[StageSpec]
    seed: int = 0
    description: str = ""
    log_with: str | None = None  # a tracker beside metrics.jsonl: tensorboard | wandb (train/trackers.py)


# ------------------------------------------------------------------------------------------------------------
# Checks and defaults


# What a checkpoint of another family (backends.TRAINABLE) brings itself, in its own layout: a recipe that
# starts from one leaves these model fields unset.
FAMILY_FIXED = (
    "vision_tower", "language_model", "connector", "template", "frame", "vision_feature_layer",
    "image_position_embedding", "location_codec", "location_bins", "location_head",
)  # fmt: skip


def family_kind(m: ModelSpec) -> str | None:
    """The family (a key of `backends.TRAINABLE`) whose checkpoint the model starts from, else None."""
    from ..backends import TRAINABLE

    kind = getattr(m.init_from, "kind", None)
    return kind if kind in TRAINABLE else None


class FrameWarning(UserWarning):
    """A recipe's `model.frame` differs from the frame its location codec's published format refers to."""


def _check_model(m: ModelSpec, where: str) -> None:
    from ..weights import init_source  # here: weights/ imports the builder, which imports this package

    if m.init_from is not None:
        if m.preset is not None:
            raise RecipeError(f"{where}: give either preset or init_from, not both")
        try:
            m.init_from = init_source(m.init_from)  # the mapping form is what the saved recipe holds
        except ValueError as err:
            raise RecipeError(f"{where}.{err}") from None
        kind = family_kind(m)
        for name in FAMILY_FIXED if kind else ():
            if getattr(m, name) != field_default(name):
                raise RecipeError(
                    f"{where}.{name}: a {kind} checkpoint brings its own (its layout, prompts and location "
                    "format; docs/other-models.md); leave it unset"
                )
    pretrained = m.vision_tower is not None or m.language_model is not None
    if m.preset is not None and pretrained:
        raise RecipeError(f"{where}: give either preset or vision_tower + language_model, not both")
    if pretrained and not (m.vision_tower and m.language_model):
        raise RecipeError(f"{where}: pretrained parts need both vision_tower and language_model")
    pretrained = pretrained or m.init_from is not None
    for name, allowed in (
        ("preset", (None, *PRESETS)),
        ("dtype", DTYPES),
        ("words", WORD_LISTS),
        ("coordinate_init", COORDINATE_INITS),
        ("connector", CONNECTORS),
        ("template", TEMPLATES),
        ("frame", FRAMES),
        ("image_position_embedding", IMAGE_POSITION_EMBEDDINGS),
        ("location_codec", CODEC_NAMES),
    ):
        value = getattr(m, name)
        if value not in allowed:
            raise RecipeError(f"{where}.{name}: {value!r} is not one of {sorted(filter(None, allowed))}")
    # A knob the model's kind does not use must stay at its default, so a recipe never says what is ignored.
    unused = SCRATCH_ONLY if pretrained else PRETRAINED_ONLY
    for name in unused:
        if getattr(m, name) != field_default(name):
            kind = "models built from scratch" if pretrained else "pretrained parts"
            also = "" if pretrained else " (vision_tower + language_model, or init_from)"
            raise RecipeError(f"{where}.{name}: applies to {kind} only{also}")
    codec = make_codec(m)
    if not pretrained and m.coordinate_init == "sincos" and codec.coordinate_tokens() is None:
        origin = (
            f" (set by preset {m.preset!r})" if (PRESETS.get(m.preset) or {}).get("coordinate_init") else ""
        )
        raise RecipeError(
            f"{where}.coordinate_init: 'sincos'{origin} lays a code on coordinate tokens, and location_codec "
            f"{m.location_codec!r} has none; set coordinate_init: random or use a codec with coordinate tokens"
        )
    _check_frame(m, codec.frame, where)
    if m.location_head is not None:
        known = {f.name for f in dataclasses.fields(LocationHeadConfig)} - {
            "trigger_token_id",
            "slot_token_id",
        }
        if not codec.has_heads or set(m.location_head) - known:
            raise RecipeError(
                f"{where}.location_head: needs a location_codec with heads (embedding) and fields among "
                f"{sorted(known)}"
            )


def _check_frame(m: ModelSpec, published: str | None, where: str) -> None:
    """Warn when `m.frame` is not the frame the codec's published format refers to (None: the codec follows the
    model's frame). A warning, not an error: the model still learns and reads its numbers consistently in its
    own frame; they only differ from the published model's on non-square images."""
    if published is not None and m.frame != published:
        warnings.warn(
            f"{where}.frame: {m.frame!r}, but location_codec {m.location_codec!r} writes its numbers in the "
            f"{published!r} frame in its published format; this model's numbers refer to the {m.frame!r} frame, "
            f"so on non-square images they differ from the published model's (frame: {published} matches it)",
            FrameWarning,
            stacklevel=4,
        )


def _check_source(s: SourceSpec, where: str) -> None:
    if [s.shapes, s.records, s.shards].count(None) != 2:
        raise RecipeError(
            f"{where}: give exactly one of shapes: {{...}}, records: <path> or shards: <folder>"
        )
    if not s.ratio > 0:
        raise RecipeError(f"{where}.ratio: must be > 0, got {s.ratio}")
    if s.on_error not in ("skip", "raise"):
        raise RecipeError(f"{where}.on_error: must be skip or raise, got {s.on_error!r}")
    if s.shapes is not None:
        bad = [t for t in s.shapes.tasks if t not in SHAPES_TASKS]
        if bad or not s.shapes.tasks:
            raise RecipeError(f"{where}.shapes.tasks: unknown {bad}; choose from {list(SHAPES_TASKS)}")
        if s.shapes.scenes < 1:
            raise RecipeError(f"{where}.shapes.scenes: must be >= 1")
        try:
            shapes_config(s.shapes)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{where}.shapes.config: {err}") from err


def _check_stage(s: StageSpec, where: str) -> None:
    from .objectives import OBJECTIVES  # here: objectives.py imports this module

    if s.objective not in OBJECTIVES:
        raise RecipeError(f"{where}.objective: {s.objective!r} is not one of {list(OBJECTIVES)}")
    OBJECTIVES[s.objective].check(s, where)
    if s.coordinate_sigma is not None and not s.coordinate_sigma > 0:
        raise RecipeError(
            f"{where}.coordinate_sigma: must be a positive number of bins, got {s.coordinate_sigma!r}"
        )
    try:
        s.deepspeed_config = check_strategy(s.strategy, s.deepspeed_config, where)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    if s.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise RecipeError(
            f"{where}.attn_implementation: {s.attn_implementation!r} is not one of {list(ATTN_IMPLEMENTATIONS)}"
        )
    if s.packing and s.group_by_length:
        raise RecipeError(f"{where}.packing: packed rows have no padding to group by; drop group_by_length")
    if s.num_workers < 0 or s.prefetch < 1:
        raise RecipeError(f"{where}: need num_workers >= 0 and prefetch >= 1")
    if s.precision not in PRECISIONS:
        raise RecipeError(f"{where}.precision: {s.precision!r} is not one of {list(PRECISIONS)}")
    if s.template is not None and s.template not in TEMPLATES:
        raise RecipeError(f"{where}.template: {s.template!r} is not one of {sorted(TEMPLATES)}")
    if not s.train and s.lora is None:
        raise RecipeError(f"{where}.train: nothing trains; name modules with learning rates, or add lora")
    for module, lr in s.train.items():
        if not lr > 0:
            raise RecipeError(f"{where}.train.{module}: learning rate must be > 0, got {lr}")
    if not s.data:
        raise RecipeError(f"{where}.data: a stage needs at least one source")
    names = [d.name for d in s.data]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}.data: source names must be unique, got {names}")
    for key in ("steps", "batch_size", "grad_accum", "max_nonfinite"):
        if getattr(s, key) < 1:
            raise RecipeError(f"{where}.{key}: must be >= 1, got {getattr(s, key)}")
    if s.save_every < 0:
        raise RecipeError(f"{where}.save_every: must be >= 0")
    if s.global_batch is not None and s.global_batch % s.batch_size:
        raise RecipeError(
            f"{where}.global_batch: {s.global_batch} is not a multiple of batch_size {s.batch_size}"
        )
    if not 0.0 <= s.warmup_ratio < 1.0 or not 0.0 <= s.min_lr_ratio <= 1.0:
        raise RecipeError(f"{where}: need 0 <= warmup_ratio < 1 and 0 <= min_lr_ratio <= 1")
    if s.lora is not None and (s.lora.r < 1 or not s.lora.target_modules):
        raise RecipeError(f"{where}.lora: need r >= 1 and at least one target module")


def _check_family_stage(s: StageSpec, kind: str, where: str) -> None:
    """What a stage training a family checkpoint (backends.TRAINABLE) cannot do: its batches carry the
    family's own inputs and its answers the family's own location format."""
    from ..backends import TRAINABLE

    refused = [
        ("objective", s.objective != "lm", "trains with objective: lm only (dense_patches reads a groundlm tower)"),
        ("template", s.template is not None, "writes conversations in its own layout; drop template"),
        ("packing", s.packing, "batches carry the family's own inputs, which packed rows do not; set it false"),
        ("group_by_length", s.group_by_length, "batches are not regrouped; set it false"),
        ("coordinate_sigma", s.coordinate_sigma is not None, "writes locations in its own format, without "
         "groundlm's coordinate tokens; drop coordinate_sigma"),
        ("strategy", s.strategy != "ddp", "trains with strategy: ddp only (fsdp and deepspeed are not tested "
         "with these checkpoints)"),
    ]  # fmt: skip
    for name, bad, why in refused:
        if bad:
            raise RecipeError(f"{where}.{name}: a {kind} checkpoint {why}")
    tasks = TRAINABLE[kind].tasks
    for j, source in enumerate(s.data):
        unknown = [t for t in source.shapes.tasks if t not in tasks] if source.shapes else []
        if unknown:
            raise RecipeError(
                f"{where}.data[{j}].shapes.tasks: {kind} has no prompt for {unknown}; it trains on "
                f"{[t for t in SHAPES_TASKS if t in tasks]}"
            )


def shapes_config(spec: ShapesSpec) -> ShapesConfig:
    """The `ShapesConfig` of a shapes source (YAML lists become the tuples the config wants)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.config.items()}
    return ShapesConfig(**values)


def resolve(recipe: Recipe, *, world_size: int = 1, where: str = "recipe") -> Recipe:
    """Check every field and fill the derived defaults: source names, warmup steps, grad_accum."""
    _check_model(recipe.model, f"{where}: model")
    if recipe.log_with is not None and recipe.log_with not in TRACKERS:
        raise RecipeError(f"{where}: log_with: {recipe.log_with!r} is not one of {sorted(TRACKERS)}")
    if not recipe.stages:
        raise RecipeError(f"{where}: stages: a recipe needs at least one stage")
    names = [s.name for s in recipe.stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{where}: stages: names must be unique, got {names}")
    for i, stage in enumerate(recipe.stages):
        at = f"{where}: stages[{i}] ({stage.name})"
        for j, source in enumerate(stage.data):
            if not source.name:
                source.name = (
                    "shapes" if source.shapes is not None else Path(source.records or source.shards).stem
                )
            _check_source(source, f"{at}.data[{j}]")
        _check_stage(stage, at)
        if family_kind(recipe.model):
            _check_family_stage(stage, family_kind(recipe.model), at)
        if stage.warmup_steps is None:
            stage.warmup_steps = round(stage.warmup_ratio * stage.steps)
        if stage.global_batch is not None:
            per_step = stage.batch_size * world_size
            if stage.global_batch % per_step:
                raise RecipeError(
                    f"{at}.global_batch: {stage.global_batch} is not a multiple of batch_size x processes "
                    f"= {stage.batch_size} x {world_size}"
                )
            stage.grad_accum = stage.global_batch // per_step
    return recipe


# ------------------------------------------------------------------------------------------------------------
# Files


def shipped_recipes() -> list[str]:
    """The names of the recipes shipped with groundlm (`groundlm train NAME`)."""
    folder = resources.files("groundlm.train") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """The YAML file for a path or the name of a shipped recipe (`shapes`, `llava`, ...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.suffix == "" and str(name_or_path) in shipped_recipes():
        return Path(str(resources.files("groundlm.train") / "recipes" / f"{name_or_path}.yaml"))
    raise FileNotFoundError(
        f"recipe {str(name_or_path)!r} is neither a file nor a shipped recipe ({', '.join(shipped_recipes())})"
    )


def from_dict(data: Any, source: str = "recipe", *, world_size: int = 1) -> Recipe:
    """A resolved `Recipe` from parsed YAML; `source` (the file name) starts every error message."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with name, model and stages")
    data = dict(data)
    defaults = data.pop("stage_defaults", None) or {}
    if not isinstance(defaults, dict):
        raise RecipeError(f"{source}: stage_defaults: expected a mapping")
    stages = data.get("stages")
    if isinstance(stages, list):
        # Defaults first, the stage's own fields over them (a stage's lora: null switches LoRA off).
        data["stages"] = [{**defaults, **s} if isinstance(s, dict) else s for s in stages]
    model = data.get("model")
    preset = model.get("preset") if isinstance(model, dict) else None
    if isinstance(preset, str):
        # The preset's overrides first, the recipe's own model fields over them.
        if preset not in PRESETS:
            raise RecipeError(
                f"{source}: model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}"
            )
        data["model"] = {**PRESETS[preset], **model}
    try:
        recipe = build(Recipe, data, "")
    except RecipeError as err:
        raise RecipeError(f"{source}: {err}") from None
    return resolve(recipe, world_size=world_size, where=source)


def load_recipe(name_or_path: str | Path, *, world_size: int = 1) -> Recipe:
    """Load, check and resolve a recipe file or shipped recipe; errors name the file and the field."""
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    return from_dict(data, str(path), world_size=world_size)


# Stage fields added after runs were checkpointed, left out of the saved recipe at their default, so such a
# run still resumes (resume compares the saved YAML).
_LATE_FIELDS = {
    "group_by_length": False,
    "coordinate_sigma": None,
    "strategy": "ddp",
    "deepspeed_config": "zero2",
    "packing": False,
    "attn_implementation": "auto",
    "num_workers": 0,
    "prefetch": 2,
}


# The same for fields of the model spec and of a ShapesWorld source.
_LATE_MODEL_FIELDS = {"region_marks": False}
_LATE_SHAPES_FIELDS = {"symbolic": False}


def _drop_defaults(data: dict | None, late: dict) -> None:
    for name, default in late.items():
        if data is not None and name in data and data[name] == default:
            del data[name]


def to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (every field, defaults filled; late fields at their default left out)."""
    data = dataclasses.asdict(recipe)
    if data["log_with"] is None:  # a late field too
        del data["log_with"]
    _drop_defaults(data["model"], _LATE_MODEL_FIELDS)
    for stage in data["stages"]:
        for source in stage["data"]:
            if source.get("shards") is None:  # a late field of the sources
                source.pop("shards", None)
            _drop_defaults(source.get("shapes"), _LATE_SHAPES_FIELDS)
        for name, default in _LATE_FIELDS.items():
            if stage.get(name) == default:
                del stage[name]
    return data


def to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML (what is saved beside every checkpoint)."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, width=110)


# ------------------------------------------------------------------------------------------------------------
# Dry runs


def dry_run(recipe: Recipe, *, steps: int = 2, scenes: int = 200) -> Recipe:
    """A copy that runs anywhere in seconds: a model from scratch of the tiny preset's sizes, ShapesWorld for
    absent data.

    A model's `init_from` that exists on this machine is kept, like records files (the dry run then loads it);
    a checkpoint of another family (`family_kind`) becomes a tiny random model of its architecture with its own
    tokenizer and processor (so its files must be here, its weights need not), trained on the family's tasks;
    otherwise the stand-in model keeps every other knob of the recipe's model (connector, template, frame, codec, ...),
    so the dry run goes through the same code paths (LoRA, templates per stage, gradient checkpointing,
    precision) as the real one. Records files that exist on this machine are kept; the others become ShapesWorld
    sources with the same name and ratio. Every stage runs `steps` steps with micro-batches of at most 2.
    """
    r = dataclasses.replace(recipe, stages=[dataclasses.replace(s) for s in recipe.stages])
    tiny = get_preset("tiny")
    start = recipe.model.init_from
    family = family_kind(recipe.model)
    stand_in = ShapesSpec()
    if family is not None:
        # The family's architecture at a tiny size, random, with the checkpoint's own tokenizer and processor:
        # the recipe's prompts, location format, LoRA targets and saving run as in the real run, in seconds.
        if not Path(expand(start.path)).is_dir():
            raise RecipeError(
                f"{recipe.name} (dry run): model.init_from.path: {start.path} not found; the dry run of a "
                f"{family} recipe needs the checkpoint's config, tokenizer and processor files (not its weights)"
            )
        r.model = dataclasses.replace(
            recipe.model, init_from=dataclasses.replace(start, options={**start.options, "tiny": True})
        )
        from ..backends import TRAINABLE

        stand_in = ShapesSpec(tasks=[t for t in SHAPES_TASKS if t in TRAINABLE[family].tasks])
    elif start is None or not Path(expand(start.path)).exists():
        r.model = dataclasses.replace(
            recipe.model,
            preset="tiny",
            vision_tower=None,
            language_model=None,
            init_from=None,
            **{name: field_default(name) for name in PRETRAINED_ONLY},
            **{name: getattr(tiny, name) for name in SIZES},
        )
    for stage in r.stages:
        data = []
        for source in stage.data:
            given = source.records or source.shards
            if given is not None and not Path(expand(given)).exists():
                shapes = dataclasses.replace(stand_in, scenes=scenes)
                source = SourceSpec(name=source.name, ratio=source.ratio, shapes=shapes)
            data.append(source)
        stage.data = data
        stage.steps = steps
        stage.batch_size = min(stage.batch_size, 2)
        stage.grad_accum = min(stage.grad_accum, 2)
        stage.global_batch = None
        stage.warmup_steps = min(stage.warmup_steps or 0, 1)
        stage.save_every = 0
    return resolve(r, where=f"{recipe.name} (dry run)")


def override_steps(recipe: Recipe, steps: int) -> Recipe:
    """A copy where every stage runs `steps` optimizer steps, warmup scaled to keep its share."""
    if steps < 1:
        raise RecipeError(f"--steps must be >= 1, got {steps}")
    r = dataclasses.replace(recipe, stages=[dataclasses.replace(s) for s in recipe.stages])
    for stage in r.stages:
        stage.warmup_steps = round((stage.warmup_steps or 0) * steps / stage.steps)
        stage.steps = steps
    return r
