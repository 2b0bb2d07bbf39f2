"""Soak (outside the default run; run with `pytest -m soak`): 32 concurrent clients for several minutes,
mixing valid greedy requests (text, images, JSON schema, streamed or not), invalid ones and streams abandoned
mid-way.
Checks: every request gets its answer or its 4xx (nothing lost or stuck), every greedy answer equals the
same request sent alone, the engine drains to empty, and the process memory stays flat.

LLAVAKIT_SOAK_SECONDS sets the length (default 180).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import httpx
import pytest

from tests.serving.conftest import data_url, start_server

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("LLAVAKIT_SOAK_SECONDS", "180"))
CLIENTS = 32
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["animal", "n"],
          "properties": {"animal": {"enum": ["cat", "cup", "rocket"]}, "n": {"type": "integer", "maximum": 99}}}


def _valid_requests(photos) -> list[dict]:
    """The distinct valid requests (greedy), each sent many times during the soak."""
    images = {name: data_url(photos[name]) for name in ("chelsea", "coffee", "rocket")}
    out = []
    for i, text in enumerate(["Hi", "What is this?", "Tell me a story", "Describe it as JSON"]):
        out.append({"messages": [{"role": "user", "content": text}], "max_tokens": 6 + 5 * i})
        for j, (name, url) in enumerate(images.items()):
            out.append({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                                  {"type": "text", "text": text}]}],
                        "max_tokens": 4 + 3 * j + 2 * i})
    out.append({"messages": [{"role": "user", "content": "JSON"}], "max_tokens": 40,
                "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}})
    for body in out:
        body["temperature"] = 0
    return out


INVALID = [({"messages": [{"role": "user", "content": "Hi"}], "temperature": 9}, 400),
           ({"messages": [{"role": "user", "content": "Hi"}], "frobnicate": True}, 400),
           ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;"
                                                                                          "base64,AAAA"}}]}]}, 400),
           ({"messages": [{"role": "user", "content": "Hi"}], "guided_regex": "(open"}, 400),
           ({"messages": []}, 422),
           ({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10 ** 6}, 400)]


def _answer(client: httpx.Client, url: str, body: dict, stream: bool) -> str:
    if not stream:
        response = client.post(url, json=body)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    text = ""
    with client.stream("POST", url, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
    return text


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads memory from /proc")
def test_32_clients_mixed_traffic_for_minutes(tiny_llava_dir, photos):
    server = start_server(tiny_llava_dir, max_batch_size=16)
    url = server.url + "/v1/chat/completions"
    valid = _valid_requests(photos)
    answers: dict[int, set[str]] = {i: set() for i in range(len(valid))}
    counts = {"sent": 0, "answered": 0, "refused": 0, "abandoned": 0}
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.time() + SECONDS

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=120) as client:
            while time.time() < deadline:
                kind = rng.random()
                try:
                    with lock:
                        counts["sent"] += 1
                    if kind < 0.6:
                        i = rng.randrange(len(valid))
                        text = _answer(client, url, valid[i], stream=rng.random() < 0.5)
                        with lock:
                            answers[i].add(text)
                            counts["answered"] += 1
                    elif kind < 0.8:
                        body, status = rng.choice(INVALID)
                        response = client.post(url, json=body)
                        assert response.status_code == status, response.text
                        assert response.json()["error"]["message"]
                        with lock:
                            counts["refused"] += 1
                    else:  # read a chunk or two, then hang up
                        body = {**rng.choice(valid), "stream": True, "max_tokens": 60}
                        with client.stream("POST", url, json=body) as response:
                            for n, _ in enumerate(response.iter_lines()):
                                if n >= rng.randrange(1, 4):
                                    break
                        with lock:
                            counts["abandoned"] += 1
                except Exception as err:  # recorded, so one failure does not hide the others
                    with lock:
                        failures.append(f"{type(err).__name__}: {err}"[:300])

    try:
        threads = [threading.Thread(target=client_loop, args=(seed,)) for seed in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(min(30.0, SECONDS / 4))  # warm-up: caches, allocator pools and thread stacks fill up
        rss_warm = _rss_mb()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append(_rss_mb())
            time.sleep(2)
        for t in threads:
            t.join()
        assert not failures, failures[:5]
        assert counts["sent"] == counts["answered"] + counts["refused"] + counts["abandoned"]
        assert counts["answered"] > CLIENTS and counts["refused"] and counts["abandoned"]
        # The engine drains: abandoned streams were cancelled, nothing is left running or queued.
        time.sleep(3)
        assert server.engine.rows == [] and server.engine.waiting.qsize() == 0 and not server.engine.pending
        # Every greedy answer equals the same request alone, on the now idle server.
        with httpx.Client(timeout=120) as client:
            for i, seen in answers.items():
                if seen:
                    assert seen == {_answer(client, url, valid[i], stream=False)}, (i, seen)
        growth = max(samples[-5:]) - rss_warm
        assert growth < 150, f"memory grew {growth:.0f} MiB after warm-up (from {rss_warm:.0f} MiB): {samples}"
        print(f"\nsoak {SECONDS:.0f}s: {counts}, RSS warm {rss_warm:.0f} MiB, end {samples[-1]:.0f} MiB")
    finally:
        server.close()
