"""ShapesWorld: the built-in synthetic world of coloured shapes, with exact boxes and masks, and records for
every task (the record contract: docs/data-format.md).

- `scene.py`: a scene from a seed (drawing, placement rules, the fixed seeds of the splits);
- `language.py`: phrases, referring expressions and questions generated from a scene and checked against it,
  and the vocabulary they and the task builders use;
- `records.py`: one record per task for a scene, and a split written to disk.
"""

from .language import (
    GENERIC_NOUNS,
    NUMBER_WORDS,
    REGION_QUESTIONS,
    RELATIONS,
    SUPERLATIVES,
    VQA_QUESTIONS,
    referring_expressions,
    vocabulary,
    words_of,
)
from .records import SHAPES_TASKS, image_name, scene_records, write_shapes
from .scene import (
    COLOURS,
    PLURALS,
    SIZE_RANGES,
    SPLIT_SEEDS,
    Scene,
    ShapeObject,
    ShapesConfig,
    generate_scene,
    png_bytes,
    scene_at,
    scene_seed,
)

__all__ = [
    "COLOURS",
    "GENERIC_NOUNS",
    "NUMBER_WORDS",
    "PLURALS",
    "REGION_QUESTIONS",
    "RELATIONS",
    "SHAPES_TASKS",
    "SIZE_RANGES",
    "SPLIT_SEEDS",
    "SUPERLATIVES",
    "VQA_QUESTIONS",
    "Scene",
    "ShapeObject",
    "ShapesConfig",
    "generate_scene",
    "image_name",
    "png_bytes",
    "referring_expressions",
    "scene_at",
    "scene_records",
    "scene_seed",
    "vocabulary",
    "words_of",
    "write_shapes",
]
