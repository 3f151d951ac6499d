"""The OpenAI-compatible API in-process: answers, streaming, every limit and malformed input, key, queue.

The tiny model is random, so these tests check plumbing and the shape of replies; where a reply must hold a
box, a stub with a fixed answer (tests/serve_helpers.py) stands in for generation.
"""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import groundlm
from groundlm.inference import GroundLM
from groundlm.serve import Limits, create_app
from tests.serve_helpers import (
    FIXED_ANSWER,
    FixedAnswerLM,
    PacedModel,
    ServerThread,
    SlowLM,
    chat_body,
    data_url,
    noise_png,
    png_bytes,
    png_claiming,
)

pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return groundlm.load(tiny_dir)


@pytest.fixture(scope="module")
def client(lm):
    with TestClient(create_app(lm, name="tiny", ui=False)) as c:
        yield c


@pytest.fixture(scope="module")
def stub(lm):
    return FixedAnswerLM(lm)


@pytest.fixture(scope="module")
def stub_client(stub):
    with TestClient(create_app(stub, name="stub", ui=False)) as c:
        yield c


SMALL = Limits(
    max_body_bytes=60_000, max_image_bytes=20_000, max_image_pixels=200 * 200, max_messages=5,
    max_text_chars=300, max_boxes=2, default_max_tokens=4, max_tokens=16,
)


@pytest.fixture(scope="module")
def small_client(lm):
    with TestClient(create_app(FixedAnswerLM(lm), name="small", limits=SMALL, ui=False)) as c:
        yield c


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _events(text: str) -> list:
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


# ---- answers ----------------------------------------------------------------------------------------------


def test_happy_path_with_an_image(client, lm):
    r = client.post("/v1/chat/completions", json=chat_body(model="tiny"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert isinstance(choice["message"]["objects"], list)
    assert body["groundlm"]["image_size"] == [80, 60] and body["groundlm"]["decoding"] == "greedy"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the server decodes exactly as GroundLM.ask does
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    assert choice["message"]["content"] == lm.ask(image, "[refer] the red circle", max_new_tokens=12).text


def test_objects_come_back_in_pixels_and_normalised(stub_client):
    r = stub_client.post("/v1/chat/completions", json=chat_body())
    body = r.json()
    assert body["choices"][0]["message"]["content"] == FIXED_ANSWER
    (obj,) = body["choices"][0]["message"]["objects"]
    assert obj["phrase"] == "red circle" and obj["mask"] is None
    assert obj["box_norm"] == pytest.approx([0.1, 0.2, 0.6, 0.7])
    assert obj["box"] == pytest.approx([8, 12, 48, 42])  # 80 x 60 image
    assert body["groundlm"]["objects"] == [obj] and body["groundlm"]["plain_text"] == "red circle"


def test_boxes_enter_the_prompt_as_location_text(stub_client, stub):
    body = chat_body("[identify] what is <box:0>", boxes=[[50, 40, 10, 20]])  # corners in either order
    assert stub_client.post("/v1/chat/completions", json=body).status_code == 200
    tokens = stub.last_prompt_tokens()
    # [10, 20, 50, 40] in an 80 x 60 image → 0.125, 0.333, 0.625, 0.667 → bins 12, 33, 62, 66
    assert tokens[-7:-1] == ["{", "<12>", "<33>", "<62>", "<66>", "}"]


def test_multi_turn_and_system_messages_reach_the_prompt(stub_client, stub):
    body = chat_body()
    body["messages"] = [
        {"role": "developer", "content": "answer briefly"},
        body["messages"][0],
        {"role": "assistant", "content": FIXED_ANSWER},
        {"role": "user", "content": [{"type": "text", "text": "[identify] what is <box:0>"}]},
    ]
    body["boxes"] = [[1, 2, 30, 40]]
    assert stub_client.post("/v1/chat/completions", json=body).status_code == 200
    # the model saw the whole conversation, the developer message as the system turn, the box in its format
    expected = stub.processor.prompt(Image.open(io.BytesIO(png_bytes())), [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "[refer] the red circle"},
        {"role": "assistant", "content": FIXED_ANSWER},
        {"role": "user", "content": "[identify] what is <box:0>"},
    ], [[1, 2, 30, 40]])
    assert stub.seen[-1].input_ids == expected.input_ids
    prompt = stub.processor.tokenizer.decode(stub.seen[-1].input_ids)
    assert prompt.index("answer briefly") < prompt.index("red circle") < prompt.index("identify")
    assert "{<1><3><37><66>}" in prompt  # [1, 2, 30, 40] of an 80 x 60 image, in bins


def test_sampling_with_temperature(client):
    r = client.post("/v1/chat/completions", json=chat_body(temperature=0.9, top_p=0.8, max_tokens=4))
    assert r.status_code == 200, r.text
    assert r.json()["groundlm"]["decoding"] == "sample"
    r = client.post("/v1/chat/completions", json=chat_body(temperature=0, max_tokens=4))
    assert r.json()["groundlm"]["decoding"] == "greedy"


def test_a_seed_makes_sampled_answers_repeat(client):
    def sampled(seed):
        r = client.post("/v1/chat/completions", json=chat_body(temperature=1.5, top_p=0.95, max_tokens=10, seed=seed))
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first
    r = client.post("/v1/chat/completions", json=chat_body(temperature=1.0, seed="seven"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_stop_strings_cut_the_answer(stub_client):
    r = stub_client.post("/v1/chat/completions", json=chat_body(stop=["</p>"]))
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "<p>red circle" and choice["finish_reason"] == "stop"


def test_streaming_sends_openai_chunks(stub_client):
    r = stub_client.post("/v1/chat/completions",
                         json=chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=64))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = _events(r.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == FIXED_ANSWER
    last = [e for e in events if e["choices"]][-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["groundlm"]["objects"][0]["phrase"] == "red circle"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] > 0


def test_streaming_sends_pieces_while_the_real_model_is_still_decoding(lm):
    paced = PacedModel(lm.model, seconds=0.1)
    received: list[tuple[str, int]] = []  # (piece, forward passes run when the client had it)
    with ServerThread(create_app(GroundLM(paced, lm.processor), ui=False)) as server:
        body = chat_body(stream=True, max_tokens=12)
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line[len("data: "):])
                    piece = event["choices"][0]["delta"].get("content") if event["choices"] else None
                    if piece:
                        received.append((piece, paced.forwards))
    assert len(received) >= 2
    assert received[0][1] < paced.forwards  # the first piece arrived while later tokens were still to come
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    assert "".join(p for p, _ in received) == lm.ask(image, "[refer] the red circle", max_new_tokens=12).text


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["queue"]["max_queue"] == Limits().max_queue


# ---- limits and malformed input ---------------------------------------------------------------------------


def _with_url(url: str) -> dict:
    return chat_body(url=url)


def _two_images() -> dict:
    body = chat_body()
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": data_url()}})
    return body


def _parts(*parts) -> dict:
    return {"messages": [{"role": "user", "content": list(parts)}]}


BAD_REQUESTS = {
    # limits (SMALL): image bytes, pixels, bombs, images, tokens, messages, text, boxes
    "image bytes": (_with_url(data_url(noise_png((100, 100)))), 413, "image_too_large"),
    "image pixels": (_with_url(data_url(png_bytes(size=(400, 300)))), 413, "invalid_image"),
    "decompression bomb": (_with_url(data_url(png_claiming(100_000, 100_000))), 413, "invalid_image"),
    "header claims too many pixels": (_with_url(data_url(png_claiming(5000, 5000))), 413, "invalid_image"),
    "two images": (_two_images(), 400, "too_many_images"),
    "max_tokens above limit": (chat_body(max_tokens=17), 400, "max_tokens_too_large"),
    "max_completion_tokens above limit": ({**chat_body(max_completion_tokens=100), "max_tokens": None}, 400,
                                          "max_tokens_too_large"),
    "max_tokens zero": (chat_body(max_tokens=0), 400, None),
    "too many messages": ({"messages": [{"role": "user", "content": "a"},
                                        {"role": "assistant", "content": "b"}] * 3},
                          400, "too_many_messages"),
    "text too long": (chat_body("x " * 200), 400, "text_too_long"),
    "too many boxes": (chat_body("<box:0>", boxes=[[0, 0, 1, 1]] * 3), 400, "too_many_boxes"),
    # URL schemes: only inline data URLs
    "http url": (_with_url("http://127.0.0.1:1/cat.png"), 400, "unsupported_url"),
    "https url": (_with_url("https://example.com/cat.png"), 400, "unsupported_url"),
    "file url": (_with_url("file:///etc/passwd"), 400, "unsupported_url"),
    "local path": (_with_url("/etc/passwd"), 400, "unsupported_url"),
    "ftp url": (_with_url("ftp://host/x.png"), 400, "unsupported_url"),
    "data url not an image": (_with_url("data:text/plain;base64,aGVsbG8="), 400, "invalid_image_url"),
    "data url not base64": (_with_url("data:image/png,rawbytes"), 400, "invalid_image_url"),
    "data url bad base64": (_with_url("data:image/png;base64,@@@@"), 400, "invalid_image_url"),
    "data url empty": (_with_url("data:image/png;base64,"), 400, "invalid_image"),
    "not an image": (_with_url(data_url(b"GIF89a but not really")), 400, "invalid_image"),
    # malformed content parts and messages
    "unknown part type": (_parts({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}),
                          400, None),
    "text part without text": (_parts({"type": "text"}), 400, None),
    "image part without url": (_parts({"type": "image_url", "image_url": {}}), 400, None),
    "extra key in a part": (_parts({"type": "text", "text": "hi", "oops": 1}), 400, None),
    "content is a number": ({"messages": [{"role": "user", "content": 5}]}, 400, None),
    "content missing": ({"messages": [{"role": "user"}]}, 400, None),
    "tool role": ({"messages": [{"role": "tool", "content": "x"}]}, 400, None),
    "no messages": ({"messages": []}, 400, None),
    "messages missing": ({"model": "small"}, 400, None),
    "last message from assistant": ({"messages": [{"role": "user", "content": "a"},
                                                  {"role": "assistant", "content": "b"}]}, 400, None),
    "image in an assistant turn": ({"messages": [
        {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_url()}}]},
        {"role": "user", "content": "a"},
    ]}, 400, None),
    "image placeholder in text": (chat_body("what is <image>"), 400, None),
    "slot without a box": (chat_body("what is <box:3>", boxes=[[1, 1, 5, 5]]), 400, None),
    "boxes without an image": ({"messages": [{"role": "user", "content": "<box:0>"}],
                                "boxes": [[1, 1, 2, 2]]}, 400, None),
    "box with three numbers": (chat_body("<box:0>", boxes=[[1, 2, 3]]), 400, None),
    # decoding settings
    "temperature too high": (chat_body(temperature=3), 400, None),
    "top_p above 1": (chat_body(top_p=1.5), 400, None),
    "n above 1": (chat_body(n=2), 400, None),
    "too many stop strings": (chat_body(stop=["a", "b", "c", "d", "e"]), 400, None),
    "unknown model": (chat_body(model="gpt-4o"), 404, "model_not_found"),
    "body is a list": ([1, 2, 3], 400, "invalid_body"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_a_4xx_with_a_message(small_client, name):
    body, status, code = BAD_REQUESTS[name]
    error = _error(small_client.post("/v1/chat/completions", json=body), status)
    if code is not None:
        assert error["code"] == code, error
    # and the server keeps serving
    assert small_client.post("/v1/chat/completions", json=chat_body()).status_code == 200


def test_body_size_limit_with_and_without_content_length(small_client):
    big = json.dumps(chat_body("x" * 70_000)).encode()
    error = _error(small_client.post("/v1/chat/completions", content=big,
                                     headers={"content-type": "application/json"}), 413)
    assert error["code"] == "request_too_large" and "60,000" in error["message"]

    def chunks():  # no Content-Length: the body arrives chunked and is counted as it comes
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    error = _error(small_client.post("/v1/chat/completions", content=chunks(),
                                     headers={"content-type": "application/json"}), 413)
    assert error["code"] == "request_too_large"
    assert small_client.post("/v1/chat/completions", json=chat_body()).status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b'{"messages": [}', b"null", b"NaN"])
def test_malformed_json(small_client, raw):
    error = _error(small_client.post("/v1/chat/completions", content=raw,
                                     headers={"content-type": "application/json"}), 400)
    assert error["type"] == "invalid_request_error"


def test_nan_and_infinity_are_refused(small_client):
    json_header = {"content-type": "application/json"}
    raw = json.dumps(chat_body("<box:0>", boxes=[[1, 2, 3, 4]]))
    raw = raw.replace("[1, 2, 3, 4]", "[1, NaN, 3, Infinity]")
    _error(small_client.post("/v1/chat/completions", content=raw, headers=json_header), 400)
    raw = json.dumps(chat_body()).replace('"max_tokens": 12', '"max_tokens": 12, "temperature": NaN')
    _error(small_client.post("/v1/chat/completions", content=raw, headers=json_header), 400)


def test_context_length_is_checked_before_generation(stub_client):
    error = _error(stub_client.post("/v1/chat/completions", json=chat_body("[vqa] " + "circle " * 1100)), 400)
    assert error["code"] == "context_length_exceeded"


def test_unknown_routes_and_methods_answer_in_the_error_shape(small_client):
    assert _error(small_client.get("/v1/nothing"), 404)["code"] == "not_found"
    assert _error(small_client.get("/v1/chat/completions"), 405)["code"] == "method_not_allowed"


# ---- API key ----------------------------------------------------------------------------------------------


def test_api_key(stub):
    with TestClient(create_app(stub, name="stub", api_key="sekret", ui=False)) as c:
        error = _error(c.get("/v1/models"), 401)
        assert error["code"] == "invalid_api_key"
        assert _error(c.post("/v1/chat/completions", json=chat_body(),
                             headers={"Authorization": "Bearer wrong"}), 401)
        # refused before the body is parsed: no hint about the JSON to a client without the key
        assert _error(c.post("/v1/chat/completions", content=b"{bad"), 401)
        assert c.get("/health").status_code == 200
        ok = c.post("/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["objects"]


# ---- the queue --------------------------------------------------------------------------------------------


async def _concurrent(app, bodies: list[dict]) -> list[httpx.Response]:
    service = app.state.service
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as c:
            return await asyncio.gather(*(c.post("/v1/chat/completions", json=b) for b in bodies))
    finally:
        await service.batcher.stop()


def test_full_queue_answers_503_with_retry_after_and_recovers(lm):
    limits = Limits(max_batch_size=1, max_queue=1, max_wait_ms=0)
    app = create_app(SlowLM(lm, 0.6), limits=limits, ui=False)
    responses = asyncio.run(_concurrent(app, [chat_body() for _ in range(6)]))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 2 and statuses.count(200) >= 1, statuses
    for r in responses:
        if r.status_code == 503:
            assert _error(r, 503)["code"] == "server_overloaded" and int(r.headers["Retry-After"]) >= 1
    # the queue drains and the server answers again
    assert asyncio.run(_concurrent(app, [chat_body()]))[0].status_code == 200


def test_a_request_that_waits_too_long_gets_503_not_a_hang(lm):
    app = create_app(SlowLM(lm, 1.5), limits=Limits(request_timeout_s=0.2), ui=False)
    (r,) = asyncio.run(_concurrent(app, [chat_body()]))
    assert _error(r, 503)["code"] == "timeout" and "Retry-After" in r.headers


def test_concurrent_requests_share_batches(lm):
    stub = FixedAnswerLM(lm)
    app = create_app(stub, limits=Limits(max_batch_size=8, max_wait_ms=300), ui=False)
    responses = asyncio.run(_concurrent(app, [chat_body() for _ in range(6)]))
    assert all(r.status_code == 200 for r in responses)
    assert max(stub.batch_sizes) > 1 and sum(stub.batch_sizes) == 6


class BrokenLM(FixedAnswerLM):
    def generate(self, batch, max_new_tokens, **decoding):
        raise RuntimeError("kaput: internal detail")


def test_a_generation_fault_is_a_500_in_the_error_shape_and_the_server_goes_on(lm):
    with TestClient(create_app(BrokenLM(lm), ui=False), raise_server_exceptions=False) as c:
        error = _error(c.post("/v1/chat/completions", json=chat_body()), 500)
        assert error["type"] == "server_error" and "kaput" not in error["message"]
        assert c.get("/health").json()["status"] == "ok"


def test_array_masks_are_sent_as_coco_rle():
    from groundlm.location import GroundedObject
    from groundlm.masks import decode_mask

    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:5] = True
    out = GroundedObject("a", (0.1, 0.2, 0.6, 0.7), (1.0, 1.0, 5.0, 4.0), torch.from_numpy(mask)).to_dict()
    assert out["mask"]["size"] == [6, 8] and (decode_mask(out["mask"], 6, 8) == mask).all()
    assert json.loads(json.dumps(out)) == out
