"""ShapesWorld records: one per task for a scene, and the split written to disk as images + records.jsonl."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ...masks import rle_encode
from ...records import GroundTruthObject, Message, Record, write_jsonl
from .. import tasks as T
from . import language as L
from .scene import Scene, ShapesConfig, png_bytes, scene_at

Built = tuple[list[Message], dict] | None


def _caption(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    return T.caption(L.join_phrases([p for p, _ in L.caption_groups(scene)]), rng, eval=ev), {}


def _grounding(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    text = L.join_phrases([T.ground(p, idx) for p, idx in L.caption_groups(scene)])
    return T.grounding(text, rng, eval=ev), {}


def _vqa(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    kind, question, answer = L.vqa_question(scene, rng, config)
    return T.vqa(question, answer, rng, eval=ev), {"question_type": kind, "answer": answer}


def _refer(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    chosen = L.choose_referent(scene, rng)
    if chosen is None:
        return None
    i, kind, expression = chosen
    return T.refer(expression, i, rng, eval=ev), {"target": i, "expression": expression, "kind": kind}


def _identify(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    i = rng.randrange(len(scene.objects))
    return T.identify(i, scene.objects[i].label, rng, eval=ev), {"target": i}


def _detection(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    d = rng.choice(L.descriptions(rng.choice(scene.objects)))
    phrase = L.phrase_of(d, plural=True)
    idx = list(L.matching(scene, d))
    return T.detection(phrase, idx, rng, eval=ev), {"phrase": phrase, "targets": idx}


def _region_chat(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    kind, question, answer = L.region_question(scene, rng)
    return [Message("user", question), Message("assistant", answer)], {"question_type": kind}


@dataclass(frozen=True)
class _Builder:
    """How a task's conversation is built from a scene, and whether its objects carry their masks."""

    build: Callable[[Scene, random.Random, bool, ShapesConfig], Built]
    masks: bool = False


_BUILDERS: dict[str, _Builder] = {
    "caption": _Builder(_caption),
    "vqa": _Builder(_vqa),
    "refer": _Builder(_refer),
    "identify": _Builder(_identify),
    "grounding": _Builder(_grounding),
    "detection": _Builder(_detection),
    "segmentation": _Builder(_refer, masks=True),  # a refer record whose objects carry their masks
    "region_chat": _Builder(_region_chat),
}
# The order of a scene's records: `train.sources.ShapesSource` indexes samples by it, so it is fixed.
SHAPES_TASKS: tuple[str, ...] = tuple(_BUILDERS)


def image_name(split: str, index: int) -> str:
    """The record's relative image path for scene ``index`` of ``split``: ``images/val_000012.png``."""
    return f"images/{split}_{index:06d}.png"


def scene_records(
    scene: Scene,
    split: str,
    index: int,
    tasks: Sequence[str] = SHAPES_TASKS,
    *,
    eval_prompts: bool | None = None,
    config: ShapesConfig | None = None,
) -> list[Record]:
    """One record per task for a scene (ids ``shapes-<split>-<index>-<task>``).

    ``eval_prompts`` (default: every split but train) uses the fixed evaluation instructions instead of
    drawing from the pools. A task the scene cannot support is left out (only ``refer``/``segmentation``,
    when no object can be singled out, e.g. two identical objects side by side). Each task's wording is drawn
    from its own generator seeded by (scene seed, task), so records don't shift when the task list changes.
    """
    config = config or ShapesConfig()
    unknown = [t for t in tasks if t not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown ShapesWorld tasks {unknown}; choose from {list(SHAPES_TASKS)}")
    ev = split != "train" if eval_prompts is None else eval_prompts
    records = []
    for task in tasks:
        if not scene.objects:
            break
        builder = _BUILDERS[task]
        built = builder.build(scene, random.Random(f"{scene.seed}:{task}"), ev, config)
        if built is None:
            continue
        messages, extra = built
        objects = [
            GroundTruthObject(box=o.box, label=o.label, mask=rle_encode(o.mask) if builder.masks else None)
            for o in scene.objects
        ]
        meta = {"task": task, "split": split, "scene": index, "seed": scene.seed, **extra}
        records.append(
            Record(f"shapes-{split}-{index}-{task}", image_name(split, index), objects, messages, meta)
        )
    return records


def write_shapes(
    out_dir: str | Path,
    n: int,
    split: str = "train",
    tasks: Sequence[str] = SHAPES_TASKS,
    config: ShapesConfig | None = None,
    *,
    eval_prompts: bool | None = None,
    progress: bool = True,
) -> Path:
    """Write scenes ``0..n-1`` of ``split`` as ``images/*.png`` plus ``records.jsonl``; return the JSONL path."""
    config = config or ShapesConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def generate():
        for index in tqdm(range(n), desc=f"shapes {split}", unit="scene", disable=not progress):
            scene = scene_at(split, index, config)
            (out / image_name(split, index)).write_bytes(png_bytes(scene.image))
            yield from scene_records(scene, split, index, tasks, eval_prompts=eval_prompts, config=config)

    path = out / "records.jsonl"
    write_jsonl(path, generate())
    return path
