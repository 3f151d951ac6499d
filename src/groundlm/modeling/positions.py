"""Sinusoidal codes of image positions and coordinate values, shared by the visual tokens and `<0>`..`<bins>`.

A model trained from scratch has no reason to know where a visual token sits in the image once the connector
has mixed it into the language model's sequence (the tower's own position embeddings are diluted by its
layers). `image_position_embedding="sincos2d"` adds a fixed 2-D sinusoidal code of each visual token's centre
to the connector's output: half the channels code x, half code y, each as sin/cos pairs at geometric
frequencies. The coordinate tokens of the location codec can start from the same 1-D code of their value
(`coordinate_code`), so "the token whose centre is at x = 0.3" and "`<30>`" begin related instead of random.

Values are fractions of the model's square input frame (0 = left/top edge, 1 = right/bottom edge), measured in
location bins before coding, so the fastest frequency resolves about one bin.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .connector import merged_centres

if TYPE_CHECKING:  # config.py reads IMAGE_POSITION_EMBEDDINGS from here, so no import of it at run time
    from .config import GroundLMConfig

# Fixed codes added to the visual tokens after the connector: none, or `image_position_codes`.
IMAGE_POSITION_EMBEDDINGS = ("none", "sincos2d")
# How a model built from scratch starts the rows of `<0>`..`<bins>`: random, or `init_coordinate_embeddings`.
COORDINATE_INITS = ("random", "sincos")
# The slowest frequency's wavelength, in bins: longer than the 0..bins range, so no two values share a code.
MAX_WAVELENGTH = 400.0


def sincos_1d(values: torch.Tensor, dim: int, bins: int) -> torch.Tensor:
    """The sinusoidal code of `values` (fractions in [0, 1]), [..., dim]; dim must be even.

    Channel pairs (2k, 2k+1) hold sin and cos of `value * bins * w_k`, with wavelengths `2*pi / w_k` from
    about 2 bins up to MAX_WAVELENGTH bins (geometric), so nearby values get similar codes.
    """
    if dim % 2:
        raise ValueError(f"a sinusoidal code needs an even width, got {dim}")
    half = dim // 2
    # Wavelengths 2 .. MAX_WAVELENGTH bins, geometric: w_k = 2*pi / wavelength_k.
    wavelengths = 2.0 * (MAX_WAVELENGTH / 2.0) ** (torch.arange(half, dtype=torch.float64) / max(half - 1, 1))
    freqs = 2 * math.pi / wavelengths  # [half]
    angles = values.to(torch.float64).unsqueeze(-1) * bins * freqs  # [..., half]
    code = torch.stack([angles.sin(), angles.cos()], dim=-1)  # [..., half, 2]
    return code.flatten(-2).to(torch.float32)  # [..., dim]


def sincos_2d(xy: torch.Tensor, dim: int, bins: int) -> torch.Tensor:
    """The 2-D code of points `xy` [..., 2] (fractions): x in the first dim/2 channels, y in the rest."""
    if dim % 4:
        raise ValueError(f"a 2-D sinusoidal code needs a width divisible by 4, got {dim}")
    return torch.cat([sincos_1d(xy[..., 0], dim // 2, bins), sincos_1d(xy[..., 1], dim // 2, bins)], dim=-1)


def image_token_centres(config: GroundLMConfig) -> torch.Tensor:
    """The centre (x, y) of every image token in the input frame, [N_img, 2], as fractions.

    Patch tokens sit on a row-major grid; a merging connector's token (`concat4`: a 1x4 strip inside a row when
    the grid width is a multiple of 4; `merge2x2`: a 2x2 block) is centred at the mean of its patches.
    """
    if config.connector == "qformer":
        raise ValueError("image_position_embedding needs tokens tied to image positions; qformer queries are not")
    if config.num_vision_features != (config.image_size // config.vision_config.patch_size) ** 2:
        raise ValueError("image_position_embedding needs patch tokens only (vision_feature_select_strategy 'default')")
    grid = config.image_size // config.vision_config.patch_size
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid  # [G]
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # [G*G, 2], row-major like the tower's tokens
    return merged_centres(config.connector, points)  # [N_img, 2]


def image_position_codes(config: GroundLMConfig) -> torch.Tensor:
    """The fixed codes added to the connector's output, [N_img, D] (D: the language model's width)."""
    return sincos_2d(image_token_centres(config), config.text_config.hidden_size, config.location_bins)


def coordinate_code(bins: int, dim: int) -> torch.Tensor:
    """The code of coordinate tokens `<0>`..`<bins>`, [bins + 1, dim]: the 1-D code of k / bins, repeated in
    the x half and the y half of the channels, so it matches the visual code's layout for either axis."""
    values = torch.arange(bins + 1, dtype=torch.float32) / bins
    one = sincos_1d(values, dim // 2, bins)  # [bins + 1, dim/2]
    return torch.cat([one, one], dim=-1)


def init_coordinate_embeddings(model, ids: list[int]) -> None:
    """Start the rows of `<0>`..`<bins>` (token `ids`, in value order) of the input embeddings and the lm_head
    from `coordinate_code` (`coordinate_init="sincos"`).

    Neighbouring bins then begin with similar embeddings and similar output rows, so learning that the answer is
    "about 30" helps `<29>` and `<31>` too, and the input rows share the layout of the visual position code.
    The code is scaled to the table's own init spread, so nothing else changes.
    """
    bins = len(ids) - 1
    rows = torch.tensor(ids)  # [bins + 1]
    with torch.no_grad():
        for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            code = coordinate_code(bins, table.shape[1])  # [bins + 1, D], per-channel variance 1/2
            scale = float(table.std()) * 2**0.5  # match the random rows' spread
            table[rows] = (code * scale).to(table.dtype)


__all__ = [
    "COORDINATE_INITS",
    "IMAGE_POSITION_EMBEDDINGS",
    "coordinate_code",
    "init_coordinate_embeddings",
    "image_position_codes",
    "image_token_centres",
    "sincos_1d",
    "sincos_2d",
]
