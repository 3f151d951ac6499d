"""Masks in the records contract: COCO RLE (uncompressed or compressed) or polygons, decoded with pycocotools.

ShapesWorld writes uncompressed RLE (`{"size": [h, w], "counts": [runs...]}`, column-major, starting with a
run of zeros), which is valid COCO RLE and readable in a JSONL file; COCO and RefCOCO carry polygons or
compressed RLE. Everything that reads a mask (drawing, segmentation metrics) goes through `decode_mask`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np


def rle_encode(mask: np.ndarray) -> dict:
    """Encode a ``[H, W]`` bool mask as uncompressed COCO RLE: column-major runs starting with zeros."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # COCO runs always start with a (possibly empty) run of zeros
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def decode_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation as a ``[height, width]`` bool mask (needs pycocotools).

    Accepts polygons (a list of flat ``[x1, y1, x2, y2, …]`` lists, or one flat list as lmms-eval stores
    it), uncompressed RLE (``{"counts": [ints], "size": [h, w]}``) and compressed RLE (``counts`` a string
    or bytes). Several polygons are united, as the refer toolkit's summed mask is after binarising.
    """
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # optional dependency: only callers decoding COCO masks need it
        raise ImportError("decode_mask needs pycocotools (pip install pycocotools)") from exc

    # pycocotools 2.0.x trips a numpy 2 DeprecationWarning inside its own decode; it is not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if isinstance(segmentation, Mapping):
            counts = segmentation["counts"]
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects(dict(segmentation), height, width)
            else:
                rle = dict(segmentation)
                if isinstance(counts, str):
                    rle["counts"] = counts.encode("ascii")
            decoded = mask_utils.decode(rle)
        else:
            polygons = list(segmentation)
            if polygons and not isinstance(polygons[0], list | tuple | np.ndarray):
                polygons = [polygons]  # one flat polygon
            if not polygons:
                return np.zeros((height, width), dtype=bool)
            rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
            decoded = mask_utils.decode(mask_utils.merge(rles))
    if decoded.ndim == 3:
        decoded = decoded.any(axis=2)
    return decoded.astype(bool)


def mask_to_frame(mask: np.ndarray, frame, size: int) -> np.ndarray:
    """An original-image ``[H, W]`` bool mask as the model sees it: ``[size, size]`` bool in the input frame.

    Same geometry as the image transform (`geometry.Frame`): ``resize`` stretches, ``pad`` pastes the mask into
    the centred square canvas first (padding is background). Nearest-neighbour, so the mask stays binary.
    """
    from PIL import Image

    mask = np.asarray(mask, dtype=bool)
    if frame.mode == "pad":
        canvas = np.zeros((frame.side, frame.side), dtype=bool)
        ox, oy = frame.offset
        canvas[oy : oy + mask.shape[0], ox : ox + mask.shape[1]] = mask
        mask = canvas
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def mask_from_frame(mask: np.ndarray, frame) -> np.ndarray:
    """The inverse of `mask_to_frame`: a ``[S, S]`` frame mask back to ``[frame.height, frame.width]`` pixels."""
    from PIL import Image

    img = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    if frame.mode == "pad":
        side = frame.side
        ox, oy = frame.offset
        full = np.asarray(img.resize((side, side), Image.Resampling.NEAREST)) > 127
        return full[oy : oy + frame.height, ox : ox + frame.width]
    return np.asarray(img.resize((frame.width, frame.height), Image.Resampling.NEAREST)) > 127
