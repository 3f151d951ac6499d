"""Importers: common dataset formats → records (docs/data-format.md). One plain function per format.

``from groundlm.data.importers import from_xxx`` finds every importer; one module per family of formats:

- ``from_coco_captions``      (``coco``) COCO ``captions_*.json`` → one ``[caption]`` record per image
- ``from_vqav2``, ``from_okvqa`` questions + annotations JSON → ``[vqa]`` records, 10 answers in meta
- ``from_gqa``                GQA questions JSON (a dict keyed by question id) → ``[vqa]`` records
- ``from_pope``               POPE question files → plain yes/no question records, ``label`` in meta
- ``from_llava_caps_boxes``   LLaVA's caps_boxes JSONL → ``[caption]`` and ``[detection]`` records
- ``from_minigptv2_refcoco``, ``load_refer``, ``from_refer_rec``, ``from_refer_reg`` (``refer``)
- ``from_flickr30k_grounding``, ``from_flickr30k_detection`` (``flickr``)
- ``from_llava``, ``from_sharegpt``, ``from_swift`` (``chat``): LLaVA / LLaMA-Factory sharegpt / ms-swift
  conversations (InternVL's grounding JSONL and Qwen2.5-VL's fine-tuning JSON are LLaVA's layout); with
  ``codec`` the boxes written in a model's format become slots and objects (``written``)
- ``from_coco_instances``     (``coco_instances``) COCO ``instances_*.json`` → ``[detection]`` records per category
- ``from_odvg``               (``odvg``) Grounding DINO's ODVG JSONL → ``[detection]`` and ``[grounding]`` records
- ``from_lmms_refcoco``, ``from_vlmevalkit_refcoco`` (``harness_refcoco``): RefCOCO as lmms-eval (parquet) and
  VLMEvalKit (TSV) ship it, images inside the file (written under the output folder) → ``[refer]`` records

Conventions shared by all of them: without an ``rng`` the instruction is MiniGPT-v2's evaluation prompt
(and a fixed answer is picked, e.g. the first caption); with a ``random.Random`` the instruction (and such
an answer) is drawn, for training. ``meta["task"]`` names the task and ``meta["source"]`` the format; what a
metric needs (all captions, the 10 VQA answers, the POPE label) is kept in ``meta``. Image names are those
of the source (``COCO_val2014_000000000042.jpg``); the image root is given when the records are used.
A broken row raises ``ImportRowError`` naming file, row and field, or with ``on_error="skip"`` is skipped
and counted in the ``ImportReport`` passed as ``report`` (see ``base``).
"""

from .base import ImportOptions, ImportReport, ImportRowError
from .chat import from_llava, from_sharegpt, from_swift
from .coco import from_coco_captions, from_gqa, from_llava_caps_boxes, from_okvqa, from_pope, from_vqav2
from .coco_instances import from_coco_instances
from .flickr import from_flickr30k_detection, from_flickr30k_grounding
from .harness_refcoco import from_lmms_refcoco, from_vlmevalkit_refcoco
from .odvg import from_odvg
from .refer import (
    ReferObject,
    from_minigptv2_refcoco,
    from_refer_rec,
    from_refer_reg,
    load_refer,
    refer_split_matches,
)

__all__ = [
    "ImportOptions",
    "ImportReport",
    "ImportRowError",
    "ReferObject",
    "from_coco_captions",
    "from_coco_instances",
    "from_flickr30k_detection",
    "from_flickr30k_grounding",
    "from_gqa",
    "from_llava",
    "from_llava_caps_boxes",
    "from_lmms_refcoco",
    "from_minigptv2_refcoco",
    "from_odvg",
    "from_okvqa",
    "from_pope",
    "from_refer_rec",
    "from_refer_reg",
    "from_sharegpt",
    "from_swift",
    "from_vlmevalkit_refcoco",
    "from_vqav2",
    "load_refer",
    "refer_split_matches",
]
