"""The web page without a browser: its helpers (visual prompts, task tags, drawing) and its mounting."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import groundlm
from groundlm.serve import create_app
from groundlm.serve.web import compose, corners_box, new_state, picture, point_box
from groundlm.visualize import PALETTE
from tests.serve_helpers import FixedAnswerLM

pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def stub(tiny_dir):
    return FixedAnswerLM(groundlm.load(tiny_dir))


def test_compose_adds_the_task_tag_and_the_location_slot():
    state = new_state()
    assert compose("the red circle", "refer", state) == ("[refer] the red circle", [])
    assert compose("[vqa] what colour", "refer", state) == ("[vqa] what colour", [])  # typed tag wins
    assert compose("hello", "chat", state) == ("hello", [])
    state = {**state, "boxes": [[0, 0, 5, 5]], "location": [10, 20, 30, 40]}
    assert compose("what is <box>", "identify", state) == ("[identify] what is <box:1>",
                                                           [[0, 0, 5, 5], [10, 20, 30, 40]])
    assert compose("what is this", "identify", state)[0] == "[identify] what is this <box:1>"


def test_clicks_become_boxes_inside_the_image():
    assert point_box(50, 50, 100, 100) == [48.0, 48.0, 52.0, 52.0]
    assert point_box(0, 99, 100, 100) == [0.0, 97.0, 2.0, 100.0]
    x1, y1, x2, y2 = point_box(500, 300, 1000, 600)
    assert (x2 - x1, y2 - y1) == (40, 40)  # 4% of the longer side
    assert corners_box((30, 40), (10, 5)) == [10, 5, 30, 40]


def test_picture_draws_objects_in_colour_and_the_visual_prompt_in_white():
    image = Image.new("RGB", (100, 100), (128, 128, 128))
    state = {**new_state(), "objects": [{"phrase": "a", "box": [10, 10, 60, 60], "mask": None}],
             "location": [70, 70, 90, 90]}
    pixels = np.asarray(picture(image, state)).reshape(-1, 3)
    assert (pixels == PALETTE[0]).all(axis=1).sum() > 100
    assert (pixels == (255, 255, 255)).all(axis=1).sum() > 50
    assert picture(None, state) is None


def test_page_is_mounted_and_a_key_puts_it_behind_a_login(stub):
    with TestClient(create_app(stub, name="stub")) as c:
        assert c.get("/ui/").status_code == 200 and "<html" in c.get("/ui/").text.lower()
        assert c.get("/", follow_redirects=False).headers["location"] == "/ui/"
        assert c.get("/ui/config").status_code == 200
    with TestClient(create_app(stub, name="stub", api_key="sekret")) as c:
        assert c.get("/ui/config").status_code == 401
        assert c.post("/ui/login", data={"username": "anyone", "password": "wrong"}).status_code >= 400
        assert c.post("/ui/login", data={"username": "anyone", "password": "sekret"}).status_code == 200
        assert c.get("/ui/config").status_code == 200
