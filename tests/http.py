"""Helpers for tests that start a real server process: a free port, and waiting for /health."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    """Poll url/health until it answers 200; fail if the process exits or the time runs out."""
    deadline = time.time() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.time() < deadline, "the server did not come up"
        time.sleep(0.2)
