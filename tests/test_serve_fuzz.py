"""Fuzzing the request schema with hypothesis: hundreds of generated requests, no 5xx, the server alive.

Bodies are drawn around the real schema (so many get past JSON parsing and deep into content handling):
right and wrong types for every field, content parts of known and unknown kinds, URLs of every scheme, broken
base64, huge and negative numbers, NaN, boxes and slots, plus raw bytes with assorted content types. The model
is a stub whose answer is drawn too, so the answer parser sees arbitrary model output as well.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import groundlm
from groundlm.serve import Limits, create_app
from tests.serve_helpers import FixedAnswerLM, chat_body, data_url, png_bytes, png_claiming

pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def stub(tiny_dir):
    return FixedAnswerLM(groundlm.load(tiny_dir))


@pytest.fixture(scope="module")
def client(stub):
    limits = Limits(max_body_bytes=200_000, max_image_bytes=50_000, max_image_pixels=300 * 300, max_tokens=64)
    app = create_app(stub, name="fuzz", limits=limits, ui=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)

json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
             | st.text(max_size=20))
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

URLS = st.sampled_from([
    data_url(), data_url(png_bytes(size=(400, 400))), data_url(png_claiming(90_000, 90_000)),
    data_url(b"not an image"), "data:image/png;base64,", "data:image/png;base64,%%%", "data:,", "data:",
    "data:text/html;base64,PGI+", "http://127.0.0.1:9/x.png", "https://example.com/a.jpg",
    "file:///etc/passwd", "/etc/passwd", "C:\\x.png", "ftp://h/x", "gopher://h", "", " ",
    "javascript:alert(1)",
]) | st.text(max_size=30)

TEXTS = st.sampled_from([
    "[refer] the red circle", "[identify] what is <box:0>", "<box:1>", "<box:99999999999999999999>",
    "<image>", "[caption]", "[detection] circle", "<p>x</p> {<1><2><3><4>}", "", "\x00",
    "[vqa] " + "word " * 50,
]) | st.text(max_size=40)

part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": TEXTS | json_any}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": URLS | json_any},
        optional={"detail": st.sampled_from(["auto", "low", "high", "max"]) | json_any})}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": URLS | json_any}),
    st.fixed_dictionaries({"type": st.text(max_size=10) | json_any}, optional={"text": TEXTS}),
    json_any,
)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "function", ""])
     | json_any},
    optional={"content": TEXTS | st.lists(part, max_size=3) | json_any, "name": json_any},
)
box = st.lists(st.floats(allow_nan=True) | st.integers(-(10**12), 10**12), min_size=0, max_size=5) | json_any
body = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=4) | json_any},
    optional={
        "model": st.sampled_from(["fuzz", "gpt-4o"]) | json_any,
        "max_tokens": st.integers(-5, 200) | json_any,
        "max_completion_tokens": st.integers(-5, 200) | json_any,
        "temperature": st.floats(-1, 3) | json_any, "top_p": st.floats(-1, 2) | json_any,
        "n": st.integers(-1, 3) | json_any,
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=3)) | json_any,
        "stream": st.booleans() | json_any,
        "stream_options": st.fixed_dictionaries({"include_usage": json_any}),
        "boxes": st.lists(box, max_size=3) | json_any, "seed": json_any,
    },
)
# Requests of the right shape with edge values, so the fuzzing reaches content handling, images and the model.
good_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, TEXTS),
    st.builds(lambda u: {"type": "image_url", "image_url": {"url": u}}, URLS),
)
good_message = st.builds(lambda role, content: {"role": role, "content": content},
                         st.sampled_from(["user", "user", "assistant", "system", "developer"]),
                         TEXTS | st.lists(good_part, min_size=1, max_size=3))
good_box = st.lists(st.floats(-1e4, 1e4) | st.integers(-10, 10**6), min_size=4, max_size=4)
plausible = st.fixed_dictionaries(
    {"messages": st.lists(good_message, min_size=1, max_size=4)
     | st.lists(good_part, max_size=3).map(lambda parts: [{"role": "user", "content": parts}])},
    optional={
        "max_tokens": st.integers(1, 80), "temperature": st.sampled_from([0, 0.0, 0.7, 2]),
        "top_p": st.sampled_from([0, 0.5, 1]), "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
        "stream": st.booleans(), "boxes": st.lists(good_box, max_size=3), "model": st.just("fuzz"),
    },
)
answers = st.sampled_from(["", "<p>a</p> {<1><2><3><4>}", "{<1><2>}", "<p>", "{<999999999999><1><2><3>}",
                           "<p>x</p> {<5><5><1><1>}<delim>{<0><0><100><100>}"]) | st.text(max_size=30)


def _check(response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"]


@SETTINGS
@given(body=body | plausible | plausible, answer=answers)
def test_generated_requests_never_get_a_5xx(client, stub, body, answer):
    stub.answer = answer
    raw = json.dumps(body, allow_nan=True)  # NaN and Infinity too: Python's JSON parser accepts them
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    _check(response)
    code = response.json()["error"]["code"] if response.status_code >= 400 else ""
    event(f"status {response.status_code}: {code}")  # --hypothesis-show-statistics shows how deep it got
    if response.status_code == 200 and body.get("stream") is not True:
        assert isinstance(response.json()["choices"][0]["message"]["content"], str)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "",
                                     "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                     "application/json; charset=latin-1"]))
def test_raw_bodies_never_get_a_5xx(client, raw, content_type):
    headers = {"content-type": content_type} if content_type else {}
    _check(client.post("/v1/chat/completions", content=raw, headers=headers))


def test_server_alive_after_fuzzing(client, stub):
    stub.answer = "<p>red circle</p> {<10><20><60><70>}"
    assert client.get("/health").json()["status"] == "ok"
    response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["objects"]
