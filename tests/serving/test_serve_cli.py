"""`llavakit serve` as a user starts it: a subprocess on a free 127.0.0.1 port, then /health and /v1/models."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx

from llavakit.cli.main import main


def test_serve_subprocess_answers(tiny_llava_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "serve", str(tiny_llava_dir), "--port", str(port),
                             "--served-model-name", "tiny", "--api-key", "k"], stderr=subprocess.PIPE, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, "the server did not come up"
            time.sleep(0.2)
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k"}, timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_serve_rejects_a_missing_media_folder(tiny_llava_dir, capsys):
    assert main(["serve", str(tiny_llava_dir), "--allowed-local-media-path", "/no/such/dir"]) == 2
    assert "is not a folder" in capsys.readouterr().err
