"""The official `openai` client against real servers on loopback.

1. `groundlm.serve.run` in a subprocess with the tiny model and an API key, exactly as `groundlm serve` runs
   it: the client lists the model, sends an image and gets an answer with its objects field (a random model
   rarely writes a box, so the list is usually empty).
2. A uvicorn server in a thread with a stub whose answer holds a box: the client gets that box back, in pixels
   of its image, both in a plain and in a streamed request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

import groundlm
from groundlm.serve import create_app
from tests.serve_helpers import FixedAnswerLM, ServerThread, data_url, free_port, png_bytes

openai = pytest.importorskip("openai", reason="the openai client is not installed (pip install openai)")


pytestmark = pytest.mark.usefixtures("module_one_thread")


def _messages(text: str = "[refer] the red circle") -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(size=(120, 90)))}},
        {"type": "text", "text": text},
    ]}]


@pytest.fixture(scope="module")
def served(tiny_dir, tmp_path_factory):
    """`run(tiny_dir, port=..., api_key=...)` in a subprocess; yields its base URL."""
    port = free_port()
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from groundlm.serve import run\n"
        f"run({str(tiny_dir)!r}, port={port}, api_key='test-key', name='tiny', num_threads=1, "
        "log_level='warning')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    # output to a file, not a pipe: nobody reads a pipe while the server runs, and a full one blocks it
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    log = open(log_path, "wb")  # noqa: SIM115  (closed in the finally below)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not come up in 90 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_openai_client_against_run_with_the_tiny_model(served):
    client = openai.OpenAI(base_url=served + "/v1", api_key="test-key", max_retries=0, timeout=60)
    assert [m.id for m in client.models.list()] == ["tiny"]
    completion = client.chat.completions.create(model="tiny", messages=_messages(), max_tokens=8)
    message = completion.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert isinstance(message.model_extra["objects"], list)
    extra = completion.model_extra["groundlm"]
    assert extra["image_size"] == [120, 90] and isinstance(extra["objects"], list)
    assert completion.usage.completion_tokens <= 8
    # the key is required, and the page is served on the same port
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(served + "/ui/", timeout=10).status_code in (200, 401)


def test_openai_client_gets_boxes_back(tiny_dir):
    stub = FixedAnswerLM(groundlm.load(tiny_dir))
    with ServerThread(create_app(stub, name="stub", ui=False)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        completion = client.chat.completions.create(model="stub", messages=_messages(), max_tokens=32)
        (obj,) = completion.choices[0].message.model_extra["objects"]
        assert obj["phrase"] == "red circle"
        assert obj["box"] == pytest.approx([12, 18, 72, 63])  # {<10><20><60><70>} of a 120 x 90 image
        assert obj["box_norm"] == pytest.approx([0.1, 0.2, 0.6, 0.7])

        stream = client.chat.completions.create(model="stub", messages=_messages(), max_tokens=32,
                                                stream=True)
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == completion.choices[0].message.content
        last = [c for c in chunks if c.choices][-1]
        assert last.choices[0].finish_reason == "stop"
        assert last.model_extra["groundlm"]["objects"][0]["phrase"] == "red circle"
