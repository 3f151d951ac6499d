"""Importer for Flickr30k Entities (BryanPlummer/flickr30k_entities; docs/evaluation.md).

Layout: ``<root>/Sentences/<image id>.txt`` holds five captions, one per line, with annotated phrases written
``[/EN#<entity>/<type>[/<type>…] words…]``; ``<root>/Annotations/<image id>.xml`` is Pascal-VOC-like: the image
``<size>`` and ``<object>`` elements, each naming one or more entities (``<name>``) and holding either a
``<bndbox>`` or the ``<nobndbox>``/``<scene>`` flags. An entity may have several boxes, or none (entity 0 is
"notvisual"; scene and no-box entities have no box either).

Boxes: VOC stores 1-based, inclusive pixel indices, so the box ``xmin..xmax`` covers the continuous span
``[xmin - 1, xmax]``; that span (clipped to the image) is what records store. (The dataset's own Python
utility subtracts 1 from all four numbers, i.e. pixel indices; the difference is one pixel on the right and
bottom edges.)

- ``from_flickr30k_grounding``: one ``[grounding]`` record per caption: the caption with every boxed phrase
  written ``<p>phrase</p><box:i>…`` (all of its entity's boxes); phrases without a box stay plain words.
- ``from_flickr30k_detection``: one ``[detection]`` record per distinct phrase of an image (compared
  case-insensitively over its five captions), answered with every box of every entity that phrase names.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...records import GroundTruthObject, Record
from .. import tasks
from .base import Importer, ImportOptions, PathLike, RowError

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

_PHRASE = re.compile(r"\[/EN#(?P<entity>\d+)(?P<types>(?:/[^\s/\]]+)+)\s+(?P<text>[^\[\]]+?)\s*\]")

Box = tuple[float, float, float, float]


@dataclass
class FlickrPhrase:
    """An annotated phrase of a caption: its words, the entity (coreference chain) id and its types."""

    text: str
    entity: str
    types: list[str]


@dataclass
class FlickrImage:
    """One image's annotations: size, boxes per entity, and captions as lists of plain text and phrases."""

    image_id: str
    width: int
    height: int
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    captions: list[list[str | FlickrPhrase]] = field(default_factory=list)


def parse_caption(line: str) -> list[str | FlickrPhrase]:
    """Split one annotated caption into plain-text pieces and ``FlickrPhrase``; ValueError when malformed."""
    parts: list[str | FlickrPhrase] = []
    pos = 0
    for m in _PHRASE.finditer(line):
        parts.append(line[pos : m.start()])
        types = [t for t in m.group("types").split("/") if t]
        parts.append(FlickrPhrase(" ".join(m.group("text").split()), m.group("entity"), types))
        pos = m.end()
    parts.append(line[pos:])
    for part in parts:
        if isinstance(part, str) and "[/EN#" in part:
            raise ValueError(f"malformed phrase annotation near {part[part.index('[/EN#') :][:40]!r}")
    return [p for p in parts if not isinstance(p, str) or p.strip()]


def _int(obj: ET.Element, tag: str, where: str) -> int:
    text = obj.findtext(tag)
    try:
        return int(float(text))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RowError(
            f"{where}.{tag}", f"expected an integer, got {text!r}", "missing" if text is None else "invalid"
        ) from None


def read_flickr30k_image(root: PathLike, image_id: str) -> FlickrImage:
    """Read ``Sentences/<id>.txt`` and ``Annotations/<id>.xml`` under ``root``; RowError naming the file."""
    xml_path = Path(root) / "Annotations" / f"{image_id}.xml"
    txt_path = Path(root) / "Sentences" / f"{image_id}.txt"
    for path in (xml_path, txt_path):
        if not path.is_file():
            raise RowError("<file>", "missing", "missing", file=str(path), where="file")
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise RowError("<xml>", f"not valid XML: {err}", file=str(xml_path), where="file") from None
    try:
        size = tree.find("size")
        if size is None:
            raise RowError("size", "missing", "missing")
        image = FlickrImage(image_id, _int(size, "width", "size"), _int(size, "height", "size"))
        for k, obj in enumerate(tree.findall("object")):
            names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
            if not names:
                raise RowError(f"object[{k}].name", "missing", "missing")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                continue  # a scene or no-box entity: it has no box to ground to
            xmin, ymin, xmax, ymax = (
                _int(bndbox, t, f"object[{k}].bndbox") for t in ("xmin", "ymin", "xmax", "ymax")
            )
            if xmin > xmax or ymin > ymax:
                raise RowError(f"object[{k}].bndbox", f"inverted box {[xmin, ymin, xmax, ymax]}", "bad box")
            # 1-based inclusive indices → the continuous span they cover, kept inside the image.
            box = (
                float(min(max(xmin - 1, 0), image.width)),
                float(min(max(ymin - 1, 0), image.height)),
                float(min(max(xmax, 0), image.width)),
                float(min(max(ymax, 0), image.height)),
            )
            for name in names:
                image.boxes.setdefault(name, []).append(box)
    except RowError as err:
        raise RowError(err.field, err.message, err.kind, file=str(xml_path), where="xml") from None
    lines = txt_path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            image.captions.append(parse_caption(line))
        except ValueError as err:
            raise RowError("caption", str(err), file=str(txt_path), where=f"line {lineno}") from None
    return image


def _image_ids(root: PathLike, ids: Iterable[str] | None) -> list[str]:
    if ids is not None:
        return [str(i).strip() for i in ids if str(i).strip()]
    stems = [p.stem for p in (Path(root) / "Annotations").glob("*.xml")]
    if not stems:
        raise ValueError(f"{root}: no Annotations/*.xml found (expected the Flickr30k Entities layout)")
    return sorted(stems, key=lambda s: (len(s), s))  # numeric order for numeric ids


def _rows(root: PathLike, ids: Iterable[str] | None) -> Iterator[tuple[str, str]]:
    return ((f"image {i}", i) for i in _image_ids(root, ids))


def _plain(parts: list[str | FlickrPhrase]) -> str:
    return " ".join(" ".join((p if isinstance(p, str) else p.text).split()) for p in parts)


def from_flickr30k_grounding(
    root: PathLike,
    *,
    ids: Iterable[str] | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """One ``[grounding]`` record per caption (id ``flickr30k-<image>-<k>``) under the Flickr30k Entities ``root``.

    ``ids`` restricts the images (e.g. the lines of ``test.txt``); by default every ``Annotations/*.xml``.
    ``objects`` are the boxes of the caption's boxed phrases (an entity named twice reuses its slots), each
    labelled with the phrase that first names it; ``meta["phrases"]`` lists ``{phrase, entity, types,
    boxes}`` (object indices) per boxed phrase and ``meta["caption"]`` the plain caption. A caption without a
    single boxed phrase is counted as ``no boxed phrase``.
    """
    importer = Importer(root, **options)
    rng = importer.rng

    def convert(_: int, image_id: str) -> list[Record]:
        image = read_flickr30k_image(root, image_id)
        out = []
        for k, parts in enumerate(image.captions):
            objects: list[GroundTruthObject] = []
            slots_of: dict[str, list[int]] = {}
            pieces, phrases = [], []
            for part in parts:
                boxes = [] if isinstance(part, str) else image.boxes.get(part.entity, [])
                if not boxes:
                    pieces.append(" ".join((part if isinstance(part, str) else part.text).split()))
                    continue
                if part.entity not in slots_of:
                    slots_of[part.entity] = list(range(len(objects), len(objects) + len(boxes)))
                    objects.extend(GroundTruthObject(box=b, label=part.text) for b in boxes)
                indices = slots_of[part.entity]
                pieces.append(tasks.ground(part.text, indices))
                phrases.append(
                    {"phrase": part.text, "entity": part.entity, "types": part.types, "boxes": indices}
                )
            if not phrases:
                importer.report.skip("no boxed phrase")
                continue
            meta = {
                "task": "grounding",
                "source": "flickr30k_entities",
                "image_id": image_id,
                "sentence": k,
                "caption": _plain(parts),
                "phrases": phrases,
                "width": image.width,
                "height": image.height,
            }
            messages = tasks.grounding(" ".join(pieces), rng, eval=rng is None)
            out.append(Record(f"flickr30k-{image_id}-{k}", f"{image_id}.jpg", objects, messages, meta))
        return out

    return importer.run(_rows(root, ids), convert)


def from_flickr30k_detection(
    root: PathLike,
    *,
    ids: Iterable[str] | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """One ``[detection]`` record per distinct boxed phrase of an image (id ``flickr30k-<image>-det-<n>``).

    Phrases are compared case-insensitively over the image's captions; when one phrase names several entities
    (two different "a man"), the answer holds the boxes of all of them. ``meta["entities"]`` lists them.
    """
    importer = Importer(root, **options)
    rng = importer.rng

    def convert(_: int, image_id: str) -> list[Record]:
        image = read_flickr30k_image(root, image_id)
        found: dict[str, tuple[str, list[str]]] = {}  # folded phrase -> (first spelling, entities)
        for parts in image.captions:
            for part in parts:
                if isinstance(part, FlickrPhrase) and image.boxes.get(part.entity):
                    text, entities = found.setdefault(part.text.casefold(), (part.text, []))
                    if part.entity not in entities:
                        entities.append(part.entity)
        out = []
        for n, (text, entities) in enumerate(found.values()):
            # One slot per distinct box: two entities can share a box (one <object> naming both).
            boxes = list(dict.fromkeys(b for e in entities for b in image.boxes[e]))
            objects = [GroundTruthObject(box=b, label=text) for b in boxes]
            messages = tasks.detection(text, list(range(len(objects))), rng, eval=rng is None)
            meta = {
                "task": "detection",
                "source": "flickr30k_entities",
                "image_id": image_id,
                "phrase": text,
                "entities": entities,
                "width": image.width,
                "height": image.height,
            }
            out.append(Record(f"flickr30k-{image_id}-det-{n}", f"{image_id}.jpg", objects, messages, meta))
        return out

    return importer.run(_rows(root, ids), convert)
