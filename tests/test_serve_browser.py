"""The web page in a real browser: Debian's chromium, headless, driven by playwright's Python package.

It opens `/ui` on loopback, uploads a plain grey image, clicks a point on it (a visual prompt), asks a
`[refer]` question and takes a screenshot; the answer picture must show the answer's box in the first palette
colour where the answer put it, and the clicked location in white. The PNG is kept in tests/artifacts/.
Then it picks a ShapesWorld example and checks that its picture loads.

This tests the page, not the model: the server runs a stub whose answer always holds one box
(`<p>red circle</p> {<10><20><60><70>}`), because a random tiny model rarely writes one. The browser comes
from Debian (`apt-get install -y chromium`, done here when missing and possible); playwright's own browser
download is never used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import groundlm
from groundlm.serve import create_app
from groundlm.visualize import PALETTE
from tests.serve_helpers import FixedAnswerLM, ServerThread, png_bytes

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage"]
GREY = (128, 128, 128)
SIZE = (256, 192)

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")


def _chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing and this process may (root); else skip."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("Debian's chromium is missing and cannot be installed here (needs root and apt-get): "
                    "run `apt-get install -y chromium`")
    log = ""
    for command in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        log = done.stdout[-500:] + done.stderr[-500:]
        if CHROMIUM.exists():
            return CHROMIUM
    pytest.skip(f"Debian's chromium could not be installed (`apt-get install -y chromium`): {log}")


pytestmark = pytest.mark.usefixtures("module_one_thread")


def _edges(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Left, top, right, bottom of the rectangle outline in `mask`: the rows and columns holding its long
    edges (a label's few pixels above the box do not count)."""
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    long_rows = np.flatnonzero(rows >= 0.5 * rows.max())
    long_cols = np.flatnonzero(cols >= 0.5 * cols.max())
    return long_cols.min(), long_rows.min(), long_cols.max(), long_rows.max()


def test_the_page_draws_the_answer_box(tiny_dir, tmp_path):
    chromium = _chromium()
    stub = FixedAnswerLM(groundlm.load(tiny_dir))
    image_path = tmp_path / "grey.png"
    image_path.write_bytes(png_bytes(GREY, SIZE))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve_ui.png"

    with ServerThread(create_app(stub, name="stub")) as server, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 1100},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(server.url + "/ui/", wait_until="load")
            page.locator("#image-in input[type=file]").set_input_files(str(image_path))
            shown = page.locator("#image-in img")
            shown.wait_for(state="visible")
            answer = page.locator("#answer-image img")
            answer.wait_for(state="visible")

            box = shown.bounding_box()
            # point mode (the default): one click in the middle of the image
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.locator("#location", has_text="Visual prompt").wait_for()

            before = answer.get_attribute("src")
            page.locator("#prompt textarea").fill("the red circle")
            page.locator("#send").click()
            page.locator("#chat", has_text="red circle").wait_for()
            page.wait_for_function(
                "before => document.querySelector('#answer-image img').getAttribute('src') !== before",
                arg=before,
            )
            page.wait_for_timeout(300)  # let the new picture paint
            page.screenshot(path=str(shot), full_page=True)
            answer.screenshot(path=str(tmp_path / "answer.png"))

            # an example fills the image and the question, and its picture loads under the /ui mount
            page.locator("#prompt textarea").fill("")
            uploaded = shown.get_attribute("src")
            page.get_by_text("ShapesWorld examples").scroll_into_view_if_needed()
            page.locator("table tbody tr").first.click()
            page.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('[refer] ')")
            page.wait_for_function(
                "old => { const i = document.querySelector('#image-in img');"
                " return i && i.getAttribute('src') !== old && i.complete; }", arg=uploaded,
            )
            example_width = page.evaluate("document.querySelector('#image-in img').naturalWidth")
        finally:
            browser.close()

    assert example_width > 0, "the example's picture did not load (a URL outside the /ui mount?)"
    # the question reached the model with its task tag and the clicked location as box text
    tokens = stub.last_prompt_tokens()
    assert "[refer]" in tokens and "{" in tokens, tokens

    pixels = np.asarray(Image.open(tmp_path / "answer.png").convert("RGB")).astype(int)
    grey = (np.abs(pixels - GREY) <= 3).all(axis=-1)
    red = (np.abs(pixels - PALETTE[0]) <= 45).all(axis=-1)
    white = (pixels >= 235).all(axis=-1)
    assert grey.sum() > 5000, "the answer picture is not on the page"
    assert red.sum() > 100, f"no box drawn in {PALETTE[0]}; see {shot}"
    assert white.sum() > 20, f"the clicked location is not drawn; see {shot}"
    # the red outline sits where the answer put it: {<10><20><60><70>} of the image
    gy, gx = np.flatnonzero(grey.any(axis=1)), np.flatnonzero(grey.any(axis=0))
    width, height = gx.max() - gx.min() + 1, gy.max() - gy.min() + 1
    left, top, right, bottom = _edges(red)
    found = [(left - gx.min()) / width, (top - gy.min()) / height,
             (right - gx.min()) / width, (bottom - gy.min()) / height]
    assert found == pytest.approx([0.1, 0.2, 0.6, 0.7], abs=0.03), (found, shot)
