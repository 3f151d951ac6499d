"""The web page at `/ui` (Gradio Blocks on the API's own app): ask about an image and see the boxes drawn.

Upload an image (or pick a ShapesWorld example), pick a task (one of the six identifiers, or free chat), type,
and send. The answer appears in the chat and on the picture: each grounded object's box (and mask) in its own
colour with its phrase as label. The conversation is multi-turn; a new image starts a new one.

A visual prompt is a click on the image. In "point" mode a click is a point, sent as a small box centred on it
(side: 4% of the image's longer side, at least 4 pixels), since the model reads locations as boxes; in "box"
mode two clicks are opposite corners of a box. The location enters the next user turn as a `<box:i>` slot
where the text says `<box>` (e.g. "[identify] what is <box>"), or at the end of the text otherwise; it is
drawn in white, labelled "you". Requests from the page go through the same batcher and limits as API requests.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from ..tasks import TAGGED as TASKS
from ..tasks import task_of
from ..visualize import Drawable, draw
from .content import Conversation, Decoding
from .errors import APIError
from .service import Service

# Gradio reports usage to its makers unless told not to; a local server must not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the environment switch above)

CHAT = "chat"
TASK_CHOICES = [("free chat", CHAT), *[(t, t) for t in TASKS]]
MODES = ["point", "box"]
POINT_FRACTION = 0.04  # side of a clicked point's box, as a fraction of the image's longer side
EXAMPLES = 6  # the page examples shown (examples.py)


def new_state() -> dict[str, Any]:
    """A fresh conversation: model turns, pointed-at boxes, shown turns, last objects, clicks, asked box."""
    return {"messages": [], "boxes": [], "shown": [], "objects": [], "corner": None, "location": None,
            "asked": None}


def point_box(x: float, y: float, width: int, height: int) -> list[float]:
    """The box a clicked point is sent as: a small square centred on it, kept inside the image."""
    half = max(2.0, POINT_FRACTION * max(width, height) / 2)
    return [max(0.0, x - half), max(0.0, y - half), min(float(width), x + half), min(float(height), y + half)]


def corners_box(a: tuple[float, float], b: tuple[float, float]) -> list[float]:
    """The box spanned by two clicked corners, in either order."""
    return [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]


def picture(image, state: dict) -> Any:
    """The image with the last answer's objects in palette colours and the pending visual prompt in white."""
    if image is None:
        return None
    items = [Drawable(o["box"], o["phrase"] or f"box {i}", o.get("mask"))
             for i, o in enumerate(state["objects"]) if o.get("box") is not None]
    if state["location"] is not None:
        items.append(Drawable(state["location"], "you", ground_truth=True))
    elif state["asked"] is not None:  # the location the last question pointed at, beside its answer
        items.append(Drawable(state["asked"], "asked", ground_truth=True))
    elif state["corner"] is not None:
        x, y = state["corner"]
        items.append(Drawable([x - 1, y - 1, x + 1, y + 1], "corner", ground_truth=True))
    return draw(image, items)


def _location_text(state: dict) -> str:
    if state["location"] is not None:
        box = [round(v) for v in state["location"]]
        return f"Visual prompt: box {box} (pixels); it goes with the next question."
    if state["corner"] is not None:
        return f"First corner at {[round(v) for v in state['corner']]}; click the opposite corner."
    return "No visual prompt. Click the image to point at something (mode: point or box)."


def compose(text: str, task: str, state: dict) -> tuple[str, list[list[float]]]:
    """The user turn to send (task tag, location slot) and the conversation's boxes including the new one."""
    text = (text or "").strip()
    boxes = list(state["boxes"])
    if state["location"] is not None:
        slot = f"<box:{len(boxes)}>"
        boxes.append(list(state["location"]))
        text = text.replace("<box>", slot, 1) if "<box>" in text else f"{text} {slot}".strip()
    if task != CHAT and task_of(text) is None:
        text = f"[{task}] {text}".strip()
    return text, boxes


def _shown(text: str, boxes: list[list[float]]) -> str:
    for i, box in enumerate(boxes):
        text = text.replace(f"<box:{i}>", f"[box {', '.join(str(round(v)) for v in box)}]")
    return html.escape(text)


def _answer_shown(reply_text: str, objects: list[dict]) -> str:
    lines = [html.escape(reply_text) or "(empty answer)"]
    for o in objects:
        if o["box"]:
            lines.append(f"• {html.escape(o['phrase'] or 'box')}: {[round(v) for v in o['box']]}")
    return "\n".join(lines)


def build_ui(service: Service, *, examples: int = EXAMPLES, examples_dir: Path | None = None) -> gr.Blocks:
    """The Blocks of the page, wired to `service`; example images are written to `examples_dir` (if given)."""
    # delete_cache: uploaded images are removed an hour after upload instead of piling up in the temp dir
    with gr.Blocks(title="groundlm", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        state = gr.State(new_state())
        gr.Markdown(f"## groundlm — {html.escape(service.name)}\nUpload an image, pick a task, ask. "
                    "Click the image to point at something: it becomes a location in your question.")
        with gr.Row():
            with gr.Column(scale=1):
                image_in = gr.Image(type="pil", image_mode="RGB", format="png",
                                    sources=["upload", "clipboard"], label="Image (click to point)",
                                    elem_id="image-in", height=320)
                mode = gr.Radio(MODES, value="point", label="Click makes", elem_id="click-mode")
                location_md = gr.Markdown(_location_text(new_state()), elem_id="location")
                clear_location = gr.Button("Clear visual prompt", size="sm")
            with gr.Column(scale=1):
                answer_img = gr.Image(type="pil", format="png", interactive=False, label="Answer",
                                      elem_id="answer-image", height=320)
                chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=260, feedback_options=None)
                with gr.Row():
                    task = gr.Dropdown(TASK_CHOICES, value="refer", label="Task", elem_id="task", scale=1)
                    max_tokens = gr.Slider(1, service.limits.max_tokens, step=1, label="max tokens", scale=1,
                                           value=service.limits.default_max_tokens)
                prompt = gr.Textbox(label="Question", elem_id="prompt", lines=1,
                                    placeholder="e.g. the red circle · what is <box> · (empty for caption)")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear_chat = gr.Button("New conversation", elem_id="clear")
                objects_json = gr.JSON(label="Objects (pixels of the image)", elem_id="objects")
        if examples_dir is not None and examples > 0:
            gr.Examples(examples=_example_images(examples, examples_dir), inputs=[image_in, prompt],
                        label="ShapesWorld examples (test scenes the demo's report asks its model too)")

        def on_image(image):
            fresh = new_state()
            return fresh, [], picture(image, fresh), [], _location_text(fresh)

        def on_click(image, click_mode, st, evt: gr.SelectData):
            if image is None or evt.index is None:
                return st, picture(image, st), _location_text(st)
            x, y = float(evt.index[0]), float(evt.index[1])
            st = {**st}
            if click_mode == "point":
                st["location"], st["corner"] = point_box(x, y, image.width, image.height), None
            elif st["corner"] is None:
                st["location"], st["corner"] = None, (x, y)
            else:
                st["location"], st["corner"] = corners_box(st["corner"], (x, y)), None
            return st, picture(image, st), _location_text(st)

        def on_clear_location(image, st):
            st = {**st, "location": None, "corner": None, "asked": None}
            return st, picture(image, st), _location_text(st)

        def on_clear_chat(image, st):
            fresh = new_state()
            return fresh, [], picture(image, fresh), [], _location_text(fresh)

        async def on_send(image, task_value, text, tokens, st):
            if image is None:
                raise gr.Error("Upload an image first (or pick an example).")
            user_text, boxes = compose(text, task_value, st)
            if not user_text:
                raise gr.Error("Type a question.")
            messages = [*st["messages"], {"role": "user", "content": user_text}]
            try:
                reply = await service.complete(Conversation(messages, image, boxes), Decoding(int(tokens)))
            except APIError as err:
                raise gr.Error(err.message) from err
            objects = reply.objects()
            st = {**st, "boxes": boxes, "objects": objects, "location": None, "corner": None,
                  "asked": st["location"]}
            # an empty answer cannot be an assistant turn of the next prompt; that exchange is shown, not kept
            st["messages"] = [*messages, {"role": "assistant", "content": reply.answer.text}] \
                if reply.answer.text.strip() else st["messages"]
            st["shown"] = [*st["shown"], {"role": "user", "content": _shown(user_text, boxes)},
                           {"role": "assistant", "content": _answer_shown(reply.answer.plain_text, objects)}]
            return st, st["shown"], picture(image, st), objects, _location_text(st), ""

        image_in.change(on_image, [image_in], [state, chatbot, answer_img, objects_json, location_md])
        image_in.select(on_click, [image_in, mode, state], [state, answer_img, location_md])
        clear_location.click(on_clear_location, [image_in, state], [state, answer_img, location_md])
        clear_chat.click(on_clear_chat, [image_in, state],
                         [state, chatbot, answer_img, objects_json, location_md])
        send_inputs = [image_in, task, prompt, max_tokens, state]
        send_outputs = [state, chatbot, answer_img, objects_json, location_md, prompt]
        send.click(on_send, send_inputs, send_outputs)
        prompt.submit(on_send, send_inputs, send_outputs)
    # several page users at once reach the batcher together, which is where batching happens
    blocks.queue(default_concurrency_limit=service.limits.max_batch_size, max_size=service.limits.max_queue)
    return blocks


def _example_images(n: int, directory: Path) -> list[list[str]]:
    """The first `n` page examples (`examples.py`): their ShapesWorld test scenes written as PNGs, with their
    questions (task tag included)."""
    from ..evaluate.runner import record_question
    from .examples import PAGE_EXAMPLES, example_record

    rows = []
    for example in PAGE_EXAMPLES[:n]:
        image, record = example_record(example)
        path = directory / f"shapes_test_{example.scene}_{example.task}.png"
        image.save(path)
        rows.append([str(path), record_question(record)[0]])
    return rows


def mount_ui(app, service: Service, *, path: str = "/ui", api_key: str | None = None) -> None:
    """Mount the page on `app` at `path`; with an API key, the page asks for it as the login password."""
    # only this directory is served besides Gradio's own files (never all of the temp directory)
    examples_dir = Path(tempfile.mkdtemp(prefix="groundlm-ui-examples-"))
    # removed when the app is collected or the process exits
    weakref.finalize(app, shutil.rmtree, examples_dir, ignore_errors=True)
    blocks = build_ui(service, examples_dir=examples_dir)
    auth = None
    if api_key:
        import hmac

        def auth(username: str, password: str) -> bool:  # any user name; the key is the password
            return hmac.compare_digest(password.encode(), api_key.encode())

    gr.mount_gradio_app(
        app, blocks, path=path, auth=auth,
        auth_message="Password: the server's API key." if api_key else None,
        ssr_mode=False, footer_links=[], run_history=False, max_file_size=service.limits.max_image_bytes,
        allowed_paths=[str(examples_dir)], show_error=True, theme=_local_theme(),
        # without it Gradio links example files at /gradio_api/... instead of under the mount path
        # (assumes the app is served at the host's root; behind a prefixing proxy, mount it there instead)
        root_path=path,
    )


def _local_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts: its default fonts come from a web font service, which a
    local server should not make every visitor's browser contact (and which hangs the page offline)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])
