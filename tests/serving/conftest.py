"""A live llavakit server (uvicorn in a thread, 127.0.0.1, a free port) on the tiny checkpoint, shared by the
serving tests, plus helpers to build data URLs and greedy references."""

from __future__ import annotations

import base64
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


class LiveServer:
    """A running app: its base URL, engine, processor and model (for reference runs)."""

    def __init__(self, app, engine, host: str = "127.0.0.1") -> None:
        import uvicorn

        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.engine, self.app = engine, app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_server(model_dir: Path, **options) -> LiveServer:
    from llavakit import AutoModelForImageTextToText, AutoProcessor
    from llavakit.serving.app import create_app
    from llavakit.serving.engine import Engine
    from llavakit.serving.media import MediaLimits

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    engine_options = {k: options.pop(k) for k in ("max_batch_size", "max_model_len", "kv_tokens", "max_queue")
                      if k in options}
    engine = Engine(model, processor, **engine_options)
    limits = options.pop("limits", MediaLimits())
    server = LiveServer(create_app(engine, "tiny-llava", limits, **options), engine)
    server.processor, server.model = processor, model
    return server


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory, photos) -> Path:
    """A folder the server may read file:// images from."""
    folder = tmp_path_factory.mktemp("media")
    (folder / "cat.png").write_bytes(photos["chelsea"].read_bytes())
    return folder


@pytest.fixture(scope="session")
def live_server(tiny_llava_dir, media_dir):
    from llavakit.serving.media import MediaLimits

    server = start_server(tiny_llava_dir, max_batch_size=16, limits=MediaLimits(
        max_images=2, allowed_local_path=str(media_dir), max_image_bytes=2_000_000, max_image_pixels=1_000_000))
    yield server
    server.close()


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def greedy_reference(server: LiveServer, messages: list[dict], images: list, max_new_tokens: int) -> str:
    """model.generate's greedy answer on the prompt the server builds for these messages."""
    import torch

    text = server.processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = server.processor(images=images or None, text=text, return_tensors="pt")
    with torch.no_grad():
        out = server.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return server.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
