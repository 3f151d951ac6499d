"""Records in WebDataset tar shards (data/shards.py, `groundlm data shard`) and the stage source that streams
them (train/sources.py `ShardSource`): readable by webdataset itself, each process reading only its shards,
every sample once per pass, and a stage that trains from them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.data.mixture import Mixture
from groundlm.data.shards import read_index
from groundlm.records import read_jsonl
from groundlm.train import train
from groundlm.train.build import build_for_recipe
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import SourceSpec, from_dict
from groundlm.train.sources import build_sources

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)

wds = pytest.importorskip("webdataset")  # the `data` extra (Makefile installs it)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """20 ShapesWorld records and their images, written as 5 shards of 4 samples."""
    root = tmp_path_factory.mktemp("shards")
    runner = CliRunner()
    made = runner.invoke(app, ["data", "shapes", str(root / "shapes"), "--n", "5"])
    assert made.exit_code == 0, made.output
    records = next((root / "shapes").glob("*.jsonl"))
    done = runner.invoke(app, ["data", "shard", str(records), "--out", str(root / "tars"), "--per-shard", "4"])
    assert done.exit_code == 0, done.output
    return records, root / "tars"


def test_shards_hold_every_record_and_image_and_webdataset_reads_them(sharded):
    records_file, tars = sharded
    records = read_jsonl(records_file)
    shards = read_index(tars)
    assert [s.samples for s in shards] == [4] * (len(records) // 4) + ([len(records) % 4] if len(records) % 4 else [])
    urls = [str(s.path) for s in shards]
    read = list(wds.WebDataset(urls, shardshuffle=False))  # the library's own reader, in order
    assert [json.loads(s["json"]) for s in read] == [r.to_dict() for r in records]
    for sample, record in zip(read, records, strict=True):
        image = records_file.parent / record.image
        assert sample[image.suffix.lstrip(".")] == image.read_bytes()


def _sources(tars, rank: int, world: int, batch_size: int):
    _, processor = build_for_recipe(from_dict(tiny_recipe(1)).model, seed=0)
    spec = SourceSpec(name="tars", shards=str(tars))
    return build_sources([spec], processor, "test", rank=rank, world=world, batch_size=batch_size, seed=5)


def test_each_process_reads_its_own_shards_and_every_sample_once_per_pass(sharded):
    _, tars = sharded
    shards = read_index(tars)
    total = sum(s.samples for s in shards)
    world, batch_size = 2, 2
    sources = [_sources(tars, rank, world, batch_size) for rank in range(world)]
    # The loop's view: one mixture over global batches, each process taking its slice of every batch.
    mixture = Mixture(sources[0].sources, batch_size=batch_size * world)
    positions = [[] for _ in range(world)]
    for _ in range(total // (batch_size * world)):  # one pass over both processes' streams
        _, indices = mixture.next_batch()
        for rank in range(world):
            positions[rank] += indices[rank * batch_size : (rank + 1) * batch_size]
    seen = []
    for rank, data in enumerate(sources):
        source = data.datasets["tars"]
        located = [source.locate(p) for p in positions[rank]]
        assert {shard for _, shard, _ in located} <= {s.path for s in shards[rank::world]}  # its own shards
        assert [local for local, _, _ in located] == list(range(len(located)))  # its stream, in order
        seen += [(shard, i) for _, shard, i in located]
        sample = source[positions[rank][0]]  # decodes: tokens, pixels, the record's task
        assert sample.input_ids and sample.pixel_values is not None and sample.meta["task"]
    assert len(seen) == len(set(seen)) == total


def test_a_stage_trains_from_shards_with_workers(sharded, tmp_path):
    _, tars = sharded
    data = [{"name": "tars", "shards": str(tars)}]
    losses = []
    for workers in (0, 2):
        recipe = from_dict(tiny_recipe(3, data=data, batch_size=2, num_workers=workers))
        train(recipe, tmp_path / str(workers), progress=False)
        rows = read_metrics(tmp_path / str(workers) / "metrics.jsonl")
        assert [r["source"] for r in rows] == [["tars"]] * 3
        losses.append([r["loss"] for r in rows])
    assert losses[0] == losses[1]
