"""transformers' LLaVA image processor set to give exactly groundlm's pixels for each frame.

groundlm's `images.ImageTransform` (PIL bicubic resize to S x S, then `(x / 255 - mean) / std`) is, per frame:
- `resize` (squash): `do_resize` to `{"height": S, "width": S}` with bicubic, no centre crop, no pad.
- `pad` (letterbox): the same after `do_pad`, which pastes the image floor-centred on a square of its long side,
  as groundlm does. One difference remains: transformers fills the band with `int(mean * 255)` (truncated, as
  LLaVA's `expand2square` call does) while groundlm rounds (`round(mean * 255)`: 123, 117, 104 for CLIP's mean
  where LLaVA has 122, 116, 104). The processor's arithmetic is scale-free, so it is exported with mean, std
  and rescale factor all multiplied by one constant `c`: the pixels are unchanged,
  `(x * c/255 - c*mean) / (c*std) = (x/255 - mean) / std`, and `c` is chosen so that `int(c * mean * 255)` is
  groundlm's rounded fill. A mean for which no such `c` exists is refused.
The PIL variant is saved; transformers' torchvision variant reads the same file (`image_processor_type` names
the family) and follows the same steps.
"""

from __future__ import annotations

from transformers.image_utils import PILImageResampling
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from ..images import ImageTransform


def pad_fill(mean: tuple[float, ...]) -> tuple[int, ...]:
    """The letterbox colour groundlm fills with (`images.ImageTransform`)."""
    return tuple(int(round(m * 255)) for m in mean)


def pad_scale(mean: tuple[float, ...]) -> float:
    """A constant `c` with `int(c * m * 255) == round(m * 255)` for every channel mean `m`, or ValueError."""
    fill = pad_fill(mean)
    low, high = 0.0, float("inf")
    for m, f in zip(mean, fill, strict=True):
        if m > 0:  # int(c * m * 255) lies in [f, f + 1) for c in [f / (255 m), (f + 1) / (255 m))
            low, high = max(low, f / (255 * m)), min(high, (f + 1) / (255 * m))
        elif f != 0:
            raise ValueError(f"a mean of {m} cannot give the fill {f}")
    scale = 1.0 if high == float("inf") else (low + high) / 2
    if not low < high or pad_fill_of(tuple(m * scale for m in mean)) != fill:
        raise ValueError(
            f"frame 'pad' cannot be exported: transformers fills the letterbox with int(mean * 255), and no "
            f"rescaling of the mean {tuple(mean)} turns that into groundlm's fill {fill}"
        )
    return scale


def pad_fill_of(image_mean: tuple[float, ...]) -> tuple[int, ...]:
    """The letterbox colour transformers' LLaVA image processor fills with for `image_mean`."""
    return tuple(int(x * 255) for x in image_mean)


def llava_image_processor(transform: ImageTransform) -> LlavaImageProcessorPil:
    """The image processor whose `pixel_values` equal `transform`'s for every image."""
    scale = pad_scale(transform.mean) if transform.frame == "pad" else 1.0
    side = {"height": transform.size, "width": transform.size}
    return LlavaImageProcessorPil(
        do_resize=True,
        size=side,
        resample=PILImageResampling.BICUBIC,
        do_center_crop=False,
        crop_size=side,  # LlavaProcessor counts image tokens from it
        do_pad=transform.frame == "pad",
        do_rescale=True,
        rescale_factor=scale / 255,
        do_normalize=True,
        image_mean=[m * scale for m in transform.mean],
        image_std=[s * scale for s in transform.std],
        do_convert_rgb=True,
    )
