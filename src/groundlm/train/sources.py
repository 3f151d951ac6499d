"""The data sources of a stage: ShapesWorld generated on the fly, or records JSONL files with their images.

Both are indexable and return encoded samples (`processor.Encoded`) whose `meta["task"]` says which task the
sample trains, so the loop can log a loss per task. The mixture (`data.mixture.Mixture`) picks the source of
each batch and the indices inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.dataset import LoadReport, RecordDataset, SampleError
from ..data.mixture import Source
from ..data.shapes import scene_at, scene_records
from ..processor import Encoded, GroundLMProcessor
from ..tasks import record_task
from .dense import DenseObject
from .recipe import RecipeError, ShapesSpec, SourceSpec, expand, shapes_config


class ShapesSource:
    """Random-access ShapesWorld samples: index i is scene i // len(tasks) of the split, task i % len(tasks).

    A scene that cannot support a task (no object can be singled out for `refer`) is replaced by the next
    scene's record of the same task, so the task balance holds; each replacement is counted in `report`.
    With `images_only` (a `dense_patches` stage, which reads only the image and its objects) no conversation
    is built: the sample holds the pixels, the frame and the objects, and no tokens.
    """

    def __init__(
        self, spec: ShapesSpec, processor: GroundLMProcessor, name: str = "shapes", *, images_only: bool = False
    ):
        self.spec = spec
        self.name = name
        self.images_only = images_only
        self.tasks = list(spec.tasks)
        self.config = shapes_config(spec)
        self.processor = processor
        self.report = LoadReport()
        self._encoder: RecordDataset | None = None

    def __len__(self) -> int:
        return self.spec.scenes * len(self.tasks)

    def __getitem__(self, index: int) -> Encoded:
        scene_index, k = divmod(index, len(self.tasks))
        task = self.tasks[k]
        if self.images_only:
            scene = scene_at(self.spec.split, scene_index, self.config)
            pixels, frame = self.processor.transform(scene.image)
            self.report.loaded += 1
            meta = {"id": f"{self.spec.split}-{scene_index}", "task": None, "source": self.name}
            meta["objects"] = [DenseObject(o.box, o.label, o.mask) for o in scene.objects]
            return Encoded([], [], frame=frame, pixel_values=pixels, meta=meta)
        for attempt in range(self.spec.scenes):
            i = (scene_index + attempt) % self.spec.scenes
            scene = scene_at(self.spec.split, i, self.config)
            records = scene_records(
                scene, self.spec.split, i, [task], eval_prompts=self.spec.eval_prompts, config=self.config
            )
            if records:
                if self._encoder is None:
                    # RecordDataset owns the record -> sample encoding (box checks, error naming).
                    self._encoder = RecordDataset(records, self.processor, name=self.name)
                self.report.loaded += 1
                sample = self._encoder.encode(records[0], scene.image)
                # The scene's exact masks, for objectives that look under every pixel (dense_patches).
                sample.meta["objects"] = [DenseObject(o.box, o.label, o.mask) for o in scene.objects]
                return sample
            self.report.add_skip(SampleError(f"{self.name}: scene {i}", f"no {task} record", "replaced"))
        raise SampleError(
            self.name, "no good sample", f"no scene of {self.spec.split} supports task {task!r}"
        )


class RecordsSource:
    """A records JSONL file as a source; the task of a sample is its record's (`tasks.record_task`)."""

    def __init__(self, spec: SourceSpec, processor: GroundLMProcessor):
        root = expand(spec.image_root) if spec.image_root else None
        self.dataset = RecordDataset(
            expand(spec.records), processor, image_root=root, on_error=spec.on_error, name=spec.name
        )
        self.report = self.dataset.report
        # By id: under on_error="skip" a bad record is replaced by the next one, so the index may not match.
        self.task_of_id = {r.id: record_task(r) for r in self.dataset.records}
        self.objects_of_id = {r.id: r.objects for r in self.dataset.records}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Encoded:
        sample = self.dataset[index]
        sample.meta["task"] = self.task_of_id[sample.meta["id"]]
        sample.meta["objects"] = [
            DenseObject(o.box, o.label, o.mask) for o in self.objects_of_id[sample.meta["id"]]
        ]
        return sample


@dataclass
class StageData:
    """A stage's sources by name, and the `Source` list the mixture samples from."""

    datasets: dict[str, ShapesSource | RecordsSource]
    sources: list[Source]

    def samples(self, name: str, indices: Sequence[int]) -> list[Encoded]:
        """The encoded samples `indices` of source `name`."""
        dataset = self.datasets[name]
        return [dataset[i] for i in indices]


def build_sources(
    specs: Sequence[SourceSpec], processor: GroundLMProcessor, where: str, *, images_only: bool = False
) -> StageData:
    """The datasets of a stage's mixture; a records file that does not exist is an error naming the field.

    `images_only`: ShapesWorld sources skip the conversations (see `ShapesSource`)."""
    datasets: dict[str, ShapesSource | RecordsSource] = {}
    for j, spec in enumerate(specs):
        if spec.shapes is not None:
            datasets[spec.name] = ShapesSource(spec.shapes, processor, spec.name, images_only=images_only)
            continue
        path = Path(expand(spec.records))
        if not path.is_file():
            raise RecipeError(
                f"{where}.data[{j}].records: {path} not found (convert the data to records with "
                "`groundlm data`, or try the recipe with --dry-run, which stands ShapesWorld in for it)"
            )
        datasets[spec.name] = RecordsSource(spec, processor)
    sources = [Source(s.name, len(datasets[s.name]), s.ratio) for s in specs]
    return StageData(datasets, sources)
