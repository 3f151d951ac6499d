"""Reading images safely and turning them into the model's square input frame.

`load_image` accepts what users have at hand (a path, a PIL image, raw bytes), converts every mode to RGB and
refuses decompression bombs before decoding them. `ImageTransform` is the whole image side of the processor:
plain square resize (MiniGPT-v2) or pad-to-square with the mean colour (LLaVA), then normalisation. The same
`geometry.Frame` it returns maps boxes between original pixels and the model's frame.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .geometry import FRAMES, Frame

# CLIP's normalisation constants (OpenAI CLIP, also used by LLaVA and BLIP-2/MiniGPT).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# 8192 x 8192: far above any real VLM input, far below what a crafted PNG header can claim.
MAX_PIXELS = 8192 * 8192

ImageInput = str | Path | bytes | Image.Image


class ImageError(ValueError):
    """An image could not be read, or was refused."""


def load_image(source: ImageInput, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `source` (path, bytes or PIL image) as an RGB PIL image.

    Grayscale, palette and CMYK images are converted; transparent images are composited over white (dropping
    alpha would expose whatever colour the transparent pixels happen to hold). Images whose header claims more
    than `max_pixels` pixels are refused before decoding.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        except OSError as err:
            raise ImageError(f"cannot open image {name}: {err.strerror or err}") from err
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(fp)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"image {name} refused as a possible decompression bomb: {err}") from err
        except Exception as err:  # PIL raises several types for unreadable data
            raise ImageError(f"cannot read image {name}: {err}") from err
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image {name} is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,} "
            "(decompression-bomb guard); resize it first or raise max_pixels"
        )
    try:
        image.load()
    except Exception as err:
        raise ImageError(f"cannot decode image {name}: {err}") from err
    return _to_rgb(image)


def _describe(source: ImageInput) -> str:
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.size[0]}x{source.size[1]}>"
    return f"'{source}'"


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageTransform:
    """Resize (or pad, then resize) to a `size` x `size` square and normalise to a [3, size, size] tensor."""

    size: int
    frame: str = "resize"  # "resize" (MiniGPT-v2) | "pad" (LLaVA's expand-to-square with the mean colour)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    pad_color: tuple[int, int, int] | None = None  # "pad" fill (0–255 RGB); None: the mean colour (NExT-Chat: white)

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {self.frame!r}")

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, Frame]:
        """Return the normalised pixel tensor [3, size, size] and the frame that maps boxes into it."""
        frame = Frame(image.width, image.height, self.frame)
        if self.frame == "pad":
            fill = tuple(self.pad_color) if self.pad_color else tuple(int(round(m * 255)) for m in self.mean)
            square = Image.new("RGB", (frame.side, frame.side), fill)
            square.paste(image, frame.offset)
            image = square
        image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32) / 255.0  # [H, W, 3]
        array = (array - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), frame
