"""Continuous batching: parallel streams join and leave the running batch and still give each request the
same greedy tokens as model.generate alone; the image-feature cache is shared; the KV budget is sized."""

from __future__ import annotations

import concurrent.futures

import PIL.Image
import pytest

from llavakit.serving.memory import kv_budget_tokens, kv_bytes_per_token
from tests.serving.conftest import data_url, greedy_reference

openai = pytest.importorskip("openai")

PROMPTS = ["Hi", "What is this?", "Describe the picture in detail.", "Tell me a story", "Count to ten",
           "Why is the sky blue?", "Name a color", "Hello there, how are you today?"]


def _request(i: int, photos) -> tuple[list[dict], list[dict], list, int]:
    """Request i: half with an image; lengths vary so rows join and leave at different steps."""
    text, max_tokens = PROMPTS[i % len(PROMPTS)], 4 + (i * 5) % 17
    if i % 2:
        name = ["chelsea", "coffee", "rocket", "astronaut"][i % 4]
        api = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(photos[name])}},
                                            {"type": "text", "text": text}]}]
        template = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return api, template, [PIL.Image.open(photos[name]).convert("RGB")], max_tokens
    return [{"role": "user", "content": text}], [{"role": "user", "content": text}], [], max_tokens


def test_16_parallel_streams_equal_sequential_greedy(live_server, photos):
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    requests = [_request(i, photos) for i in range(16)]
    expected = [greedy_reference(live_server, template, images, n) for _, template, images, n in requests]

    def stream(i: int) -> str:
        api, _, _, n = requests[i]
        chunks = client.chat.completions.create(model="tiny-llava", messages=api, max_tokens=n, temperature=0,
                                                stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    hits_before = live_server.engine.metrics.get("image_cache_hits_total")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(stream, range(16), timeout=300))
    assert outputs == expected
    assert live_server.engine.metrics.get("image_cache_hits_total") > hits_before  # repeated photos reuse features


def test_batch_really_runs_several_rows(live_server, monkeypatch):
    """Record the batch size of each decode step while 6 requests run together."""
    engine, sizes = live_server.engine, []
    real_step = engine._step

    def step():
        sizes.append(len(engine.rows))
        real_step()

    monkeypatch.setattr(engine, "_step", step)
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: client.chat.completions.create(
            model="tiny-llava", messages=[{"role": "user", "content": PROMPTS[i]}], max_tokens=40, temperature=0),
            range(6), timeout=120))
    assert max(sizes) > 1


def test_kv_budget_from_free_memory(live_server):
    model = live_server.model
    text = model.config.text_config
    per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads)
    assert kv_bytes_per_token(model) == per_token * 4  # float32
    assert kv_budget_tokens(model) > 1000


def test_request_larger_than_the_kv_budget_is_refused(live_server, monkeypatch):
    monkeypatch.setattr(live_server.engine, "kv_tokens", 10)
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="KV cache budget"):
        client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
