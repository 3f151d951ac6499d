"""Records in WebDataset tar shards, for data too large to hold in memory (pretraining-scale alignment sets).

`write_shards` streams a records JSONL into `shard-000000.tar`, `shard-000001.tar`, ... with webdataset's
`ShardWriter`: each sample is `<key>.json` (the record) and `<key>.<ext>` (its image's bytes, as stored), and
`shards.json` lists the shards with their sample counts, in the shard index layout of webdataset's `wids`
(`{"wids_version": 1, "shardlist": [{"url": ..., "nsamples": ...}]}`). Any WebDataset reader reads the tars.

`ShardReader` reads sample i of one shard without reading the ones before it: it lists the tar's members once
(headers only) and keeps the most recent shards open, so consecutive samples cost one seek each. The training
source over shards (train/sources.py `ShardSource`) reads them in order, each process its own shards.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..records import Record, iter_jsonl

INDEX = "shards.json"
PATTERN = "shard-%06d.tar"


@dataclass(frozen=True)
class Shard:
    """One tar shard of a shard directory and how many samples it holds."""

    path: Path
    samples: int


def read_index(folder: str | Path) -> list[Shard]:
    """The shards listed in `folder/shards.json`; errors name the file."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (write shards with `groundlm data shard RECORDS --out DIR`)"
        )
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))["shardlist"]
        shards = [Shard(path.parent / e["url"], int(e["nsamples"])) for e in listing]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a shard index ({{'shardlist': [{{'url', 'nsamples'}}]}}): {err}"
        ) from None
    if not shards or any(s.samples < 1 for s in shards):
        raise ValueError(f"{path}: lists no shards, or a shard without samples")
    return shards


def _samples(records: str | Path, image_root: Path) -> Iterator[dict]:
    for i, record in enumerate(iter_jsonl(records)):
        sample = {"__key__": f"{i:09d}", "json": json.dumps(record.to_dict()).encode("utf-8")}
        if record.image is not None:
            image = image_root / record.image
            ext = image.suffix.lower().lstrip(".") or "img"
            sample[ext] = image.read_bytes()  # as stored: no re-encoding
        yield sample


def write_shards(
    records: str | Path, out: str | Path, *, per_shard: int = 10_000, image_root: str | Path | None = None
) -> list[Shard]:
    """Stream `records` (a records JSONL) and its images into tar shards of `per_shard` samples under `out`,
    with the index `out/shards.json`. Image paths are relative to `image_root` (default: the file's folder)."""
    import webdataset as wds

    records, out = Path(records), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(image_root) if image_root is not None else records.parent
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    counts: Counter[int] = Counter()
    with wds.ShardWriter(str(out / PATTERN), maxcount=per_shard, verbose=0) as sink:
        for sample in _samples(records, root):
            sink.write(sample)
            counts[sink.shard - 1] += 1  # the writer has moved `shard` past the one it writes
    if not counts:
        raise ValueError(f"{records}: no records")
    shards = [Shard(out / (PATTERN % i), counts[i]) for i in range(len(counts))]
    index = {"wids_version": 1, "shardlist": [{"url": s.path.name, "nsamples": s.samples} for s in shards]}
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / INDEX)
    return shards


@dataclass
class ShardSample:
    """One sample of a shard: its record and its image's bytes (None for a text-only record)."""

    record: Record
    image: bytes | None
    where: str  # shard file and member key, for error messages


class ShardReader:
    """Sample i of any shard, reading only its members; the last `keep` shards stay open.

    Opened lazily in each process (a tar opened before a DataLoader forks must not share its file offset with
    the workers), so one reader serves the main process and every worker."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self._open: OrderedDict[Path, tuple[tarfile.TarFile, list[dict[str, tarfile.TarInfo]]]] = (
            OrderedDict()
        )
        self._pid = os.getpid()

    def _members(self, path: Path) -> tuple[tarfile.TarFile, list[dict[str, tarfile.TarInfo]]]:
        if self._pid != os.getpid():  # a forked worker: its own file handles
            self._open, self._pid = OrderedDict(), os.getpid()
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - kept open, closed when evicted
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        for info in tar.getmembers():  # headers only
            if info.isfile():
                key, _, ext = info.name.partition(".")
                samples.setdefault(key, {})[ext] = info
        self._open[path] = (tar, list(samples.values()))
        while len(self._open) > self.keep:
            old, _ = self._open.popitem(last=False)
            old.close()
        return self._open[path]

    def read(self, shard: Path, index: int) -> ShardSample:
        """Sample `index` of `shard`; raises ValueError naming the shard and member for a bad one."""
        tar, samples = self._members(shard)
        if not 0 <= index < len(samples):
            raise ValueError(
                f"{shard}: has {len(samples)} samples, not {index + 1} (does shards.json match?)"
            )
        members = samples[index]
        where = f"{shard.name}: {next(iter(members.values())).name.partition('.')[0]}"
        if "json" not in members:
            raise ValueError(f"{where}: no .json record")
        try:
            record = Record.from_dict(json.loads(tar.extractfile(members["json"]).read()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{where}.json: {err}") from None
        images = [info for ext, info in members.items() if ext != "json"]
        image = tar.extractfile(images[0]).read() if images else None
        return ShardSample(record, image, where)
