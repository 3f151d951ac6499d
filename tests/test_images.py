"""Image loading (modes, bytes, bombs) and the square input frame."""

import io

import pytest
import torch
from PIL import Image

from groundlm.images import ImageError, ImageTransform, load_image
from tests.conftest import realdata


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK", "I;16"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (5, 4))
    assert load_image(img).mode == "RGB"


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (2, 1), (10, 20, 30, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def test_path_bytes_and_pil_give_the_same_pixels(tmp_path):
    img = Image.new("RGB", (7, 3), (200, 10, 5))
    img.save(tmp_path / "a.png")
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), _png(img), img):
        assert load_image(src).tobytes() == img.tobytes()


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_image(bomb, max_pixels=1000 * 1000)


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_pad_frame_fills_with_the_mean_colour_and_centres():
    t = ImageTransform(size=8, frame="pad", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pixels, frame = t(Image.new("RGB", (8, 4), (255, 255, 255)))
    assert pixels.shape == (3, 8, 8)
    assert frame.offset == (0, 2)
    # top rows are padding: mean colour 128/255 normalises to about 0; the middle is white -> 1
    assert pixels[:, 0].abs().max() < 0.01
    assert torch.allclose(pixels[:, 4], torch.ones(3, 8))


def test_real_images_of_every_mode():
    for name, size in [("camera.png", (512, 512)), ("horse.png", (400, 328)), ("rocket.jpg", (640, 427))]:
        img = load_image(realdata("images", name))
        assert img.mode == "RGB" and img.size == size
        pixels, frame = ImageTransform(size=32)(img)
        assert pixels.shape == (3, 32, 32) and (frame.width, frame.height) == size
