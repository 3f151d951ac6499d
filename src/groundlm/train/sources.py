"""The data sources of a stage: ShapesWorld generated on the fly, records JSONL files with their images, or
WebDataset tar shards read as a stream (data/shards.py).

All are indexable and return encoded samples (`processor.Encoded`) whose `meta["task"]` says which task the
sample trains, so the loop can log a loss per task. The mixture (`data.mixture.Mixture`) picks the source of
each batch and the indices inside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.dataset import LoadReport, RecordDataset, SampleError
from ..data.mixture import Source
from ..data.shapes import scene_at, scene_records
from ..data.shapes.symbolic import with_scene
from ..data.shards import ShardReader, read_index
from ..geometry import Frame
from ..images import ImageError, load_image
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
        self,
        spec: ShapesSpec,
        processor: GroundLMProcessor,
        name: str = "shapes",
        *,
        images_only: bool = False,
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
                if self.spec.symbolic:
                    # No pixels: the boxes are normalised by the frame the image would have had.
                    frame = Frame(scene.image.width, scene.image.height, self.processor.transform.frame)
                    sample = self._encoder.encode(with_scene(records[0], scene.seed), None, frame=frame)
                else:
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


class ShardSource:
    """Records in tar shards, read in order without holding them in memory; each process reads its own shards.

    Shard j belongs to process j % world. A process's stream is its shards one after the other, in an order
    shuffled per pass (seed, pass, rank), each shard's samples in their written order (shuffle the records
    before sharding). The mixture gives this source its running position (an `ordered` source): each process
    takes `batch_size` consecutive positions of every global batch, which are the next `batch_size` samples
    of its own stream, so the mixture's position is all a checkpoint needs and resuming reads on from there.
    A bad sample (unreadable image, a box outside it) is replaced by the next one under `on_error: skip`.
    """

    def __init__(
        self, spec: SourceSpec, processor: GroundLMProcessor, where: str, *, rank: int, world: int, batch_size: int,
        seed: int,
    ):  # fmt: skip
        shards = read_index(expand(spec.shards))
        if len(shards) < world:
            raise RecipeError(
                f"{where}.shards: {len(shards)} shards for {world} processes; each process reads shards of its "
                "own, so write at least one per process (groundlm data shard --per-shard)"
            )
        self.name, self.on_error, self.processor = spec.name, spec.on_error, processor
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, seed
        self.mine = shards[rank::world]
        self.samples = sum(s.samples for s in self.mine)  # in this process's stream per pass
        self.size = sum(s.samples for s in shards)
        self.reader = ShardReader()
        self.report = LoadReport()
        self._encoder: RecordDataset | None = None

    def __len__(self) -> int:
        return self.size

    def locate(self, position: int) -> tuple[int, Path, int]:
        """This process's stream position at global position `position` (see the class), and its shard and
        sample."""
        block, within = divmod(position, self.batch_size * self.world)
        local = block * self.batch_size + within % self.batch_size
        return (local, *self._at(local))

    def _at(self, local: int) -> tuple[Path, int]:
        passes, offset = divmod(local, self.samples)
        order = np.random.default_rng([self.seed, passes, self.rank]).permutation(len(self.mine))
        for k in order:
            shard = self.mine[k]
            if offset < shard.samples:
                return shard.path, offset
            offset -= shard.samples
        raise AssertionError("offset beyond the shards' samples")

    def _load(self, local: int) -> Encoded:
        shard, index = self._at(local)
        try:
            sample = self.reader.read(shard, index)
        except ValueError as err:
            raise SampleError(f"{self.name}: {shard.name}", "bad sample", str(err)) from err
        record = sample.record
        if self._encoder is None:  # RecordDataset owns the record -> sample encoding (checks, error naming)
            self._encoder = RecordDataset([record], self.processor, name=self.name)
        try:
            image = load_image(sample.image) if sample.image is not None else None
        except ImageError as err:
            raise SampleError(f"{self.name}: {sample.where}", "bad image", str(err)) from err
        encoded = self._encoder.encode(record, image)
        encoded.meta["task"] = record_task(record)
        encoded.meta["objects"] = [DenseObject(o.box, o.label, o.mask) for o in record.objects]
        return encoded

    def __getitem__(self, position: int) -> Encoded:
        """The sample at the mixture's `position`; under `on_error: skip` a bad one is replaced by the next
        sample of this process's stream."""
        local = self.locate(position)[0]
        for attempt in range(self.samples):
            try:
                sample = self._load(local + attempt)
                self.report.loaded += 1
                return sample
            except SampleError as err:
                if self.on_error == "raise":
                    raise
                self.report.add_skip(err)
        raise SampleError(self.name, "no good sample", "every sample of this process's shards failed to load")


@dataclass
class StageData:
    """A stage's sources by name, and the `Source` list the mixture samples from."""

    datasets: dict[str, ShapesSource | RecordsSource | ShardSource]
    sources: list[Source]

    def samples(self, name: str, indices: Sequence[int]) -> list[Encoded]:
        """The encoded samples `indices` of source `name`."""
        dataset = self.datasets[name]
        return [dataset[i] for i in indices]


def build_sources(
    specs: Sequence[SourceSpec],
    processor: GroundLMProcessor,
    where: str,
    *,
    images_only: bool = False,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 1,
    seed: int = 0,
) -> StageData:
    """The datasets of a stage's mixture; a records file that does not exist is an error naming the field.

    `images_only`: ShapesWorld sources skip the conversations (see `ShapesSource`). Shard sources read this
    process's (`rank` of `world`) shards, `batch_size` samples per micro-batch, in an order from `seed`."""
    datasets: dict[str, ShapesSource | RecordsSource | ShardSource] = {}
    for j, spec in enumerate(specs):
        if spec.shapes is not None:
            datasets[spec.name] = ShapesSource(spec.shapes, processor, spec.name, images_only=images_only)
            continue
        if spec.shards is not None:
            try:
                datasets[spec.name] = ShardSource(
                    spec,
                    processor,
                    f"{where}.data[{j}]",
                    rank=rank,
                    world=world,
                    batch_size=batch_size,
                    seed=seed,
                )
            except (FileNotFoundError, ValueError) as err:
                if isinstance(err, RecipeError):
                    raise
                raise RecipeError(f"{where}.data[{j}].shards: {err}") from None
            continue
        path = Path(expand(spec.records))
        if not path.is_file():
            raise RecipeError(
                f"{where}.data[{j}].records: {path} not found (convert the data to records with "
                "`groundlm data import FORMAT SRC --out DIR`, or try the recipe with --dry-run, which stands "
                "ShapesWorld in for it)"
            )
        datasets[spec.name] = RecordsSource(spec, processor)
    sources = [Source(s.name, len(datasets[s.name]), s.ratio, ordered=s.shards is not None) for s in specs]
    return StageData(datasets, sources)
