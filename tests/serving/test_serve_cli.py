"""`llavakit serve` as a user starts it: a subprocess on a free 127.0.0.1 port, then /health and /v1/models."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llavakit.cli.main import main
from tests.http import free_port, wait_until_healthy


def test_serve_subprocess_answers(tiny_llava_dir):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "serve", str(tiny_llava_dir), "--port", str(port),
                             "--served-model-name", "tiny", "--api-key", "k"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url, timeout_s=60)
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}, timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_rejects_a_missing_media_folder(tiny_llava_dir, capsys):
    assert main(["serve", str(tiny_llava_dir), "--allowed-local-media-path", "/no/such/dir"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_serve_demo_by_default_logs_requests_and_answers_the_readme_snippet_deterministically():
    """`llavakit serve` with no model serves the demo; the README's client call (no temperature) is greedy."""
    openai = pytest.importorskip("openai")
    from llavakit import demo

    if not demo.has_trained_model():
        pytest.skip("the trained demo model is not shipped")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "serve", "--port", str(port)],
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url, timeout_s=60)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        image = "data:image/png;base64," + base64.b64encode(Path(demo.EXAMPLE_IMAGE).read_bytes()).decode()
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                                 {"type": "text", "text": "What shape is inside the red box?"}]}]
        answers = {client.chat.completions.create(model="demo", max_tokens=64, messages=messages)
                   .choices[0].message.content.strip() for _ in range(3)}
        assert answers == {"square"}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"serving demo on http://127.0.0.1:{port}" in err
    assert err.count("POST /v1/chat/completions 200") == 3 and "GET /health 200" in err
