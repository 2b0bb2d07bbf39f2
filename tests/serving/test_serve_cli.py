"""`llavakit serve` as a user starts it: a subprocess on a free 127.0.0.1 port, then /health and /v1/models."""

from __future__ import annotations

import subprocess
import sys

import httpx

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
