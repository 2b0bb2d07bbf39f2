"""`llavakit serve --tensor-parallel-size 2`: torchrun with 2 gloo ranks; rank 0 serves, rank 1 follows. Concurrent
greedy requests (batched together, joining and leaving mid-batch) get the answers of one process."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from llavakit import AutoModelForImageTextToText, AutoProcessor

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def test_two_rank_server_answers_like_one_process(tiny_llava_dir, photos):
    from tests.serving.conftest import data_url

    from tests.http import free_port, wait_until_healthy

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llavakit", "serve", str(tiny_llava_dir), "--port", str(port),
                             "--served-model-name", "tiny", "--max-batch-size", "4", "--tensor-parallel-size", "2"],
                            stderr=subprocess.PIPE, text=True)
    requests = [("What is this?", photos["chelsea"], 8), ("Describe it.", photos["rocket"], 5),
                ("Hello there", None, 7), ("Colors?", photos["coffee"], 6)]
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url, timeout_s=180)

        def ask(request):
            prompt, image, n = request
            content = [{"type": "text", "text": prompt}]
            if image is not None:
                content.insert(0, {"type": "image_url", "image_url": {"url": data_url(image)}})
            body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": n,
                    "temperature": 0}
            reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            return reply.json()["choices"][0]["message"]["content"]

        with ThreadPoolExecutor(len(requests)) as pool:
            answers = list(pool.map(ask, requests))
        assert ask(requests[0]) == answers[0]  # and the ranks are still in step afterwards
    finally:
        proc.terminate()  # reaches torchrun and the ranks, not only the launcher
        proc.wait(timeout=60)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir)
    from PIL import Image

    for (prompt, image, n), answer in zip(requests, answers):
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = processor(images=[Image.open(image).convert("RGB")] if image is not None else None, text=text,
                           return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False)
        assert answer == processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
