"""The server through the official openai client: chat and completions, streaming, images, errors."""

from __future__ import annotations

import json

import httpx
import PIL.Image
import pytest

from tests.serving.conftest import data_url, greedy_reference

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _image_message(url: str, text: str = "What is in the image?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": text}]}]


def test_chat_with_data_url_image_equals_generate(client, live_server, photos):
    messages = _image_message(data_url(photos["chelsea"]))
    reply = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=12, temperature=0)
    template_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                         "text": "What is in the image?"}]}]
    expected = greedy_reference(live_server, template_messages, [PIL.Image.open(photos["chelsea"]).convert("RGB")],
                                12)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 16 and reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_chunks_join_to_the_non_streamed_answer(client, photos):
    messages = _image_message(data_url(photos["coffee"]))
    whole = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_raw_sse_format_ends_with_done(live_server):
    body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", live_server.url + "/v1/chat/completions", json=body, timeout=60) as response:
        raw = response.read().decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_completions_endpoint_equals_generate(client, live_server):
    import torch

    reply = client.completions.create(model="tiny-llava", prompt="USER: Hi ASSISTANT:", max_tokens=8, temperature=0)
    inputs = live_server.processor(text="USER: Hi ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        out = live_server.model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert reply.choices[0].text == live_server.processor.decode(out[0, inputs["input_ids"].shape[1]:],
                                                                  skip_special_tokens=True)
    assert reply.object == "text_completion"


def test_logprobs_and_top_logprobs(client):
    reply = client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)  # greedy picks the top token


def test_stop_string_cuts_the_answer(client):
    messages = [{"role": "user", "content": "Hi"}]
    full = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=12, temperature=0)
    text = full.choices[0].message.content
    assert len(text) > 4, text
    stop = text[2:4]
    cut = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=12, temperature=0,
                                         stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(client):
    messages = [{"role": "user", "content": "Tell me a story"}]
    runs = [client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=8, temperature=1.0,
                                           top_p=0.9, seed=7).choices[0].message.content for _ in range(2)]
    assert runs[0] == runs[1]


def test_file_url_under_allowed_path(client, media_dir, photos):
    url = (media_dir / "cat.png").as_uri()
    by_file = client.chat.completions.create(model="tiny-llava", messages=_image_message(url), max_tokens=6,
                                             temperature=0)
    by_data = client.chat.completions.create(model="tiny-llava", messages=_image_message(data_url(photos["chelsea"])),
                                             max_tokens=6, temperature=0)
    assert by_file.choices[0].message.content == by_data.choices[0].message.content


def test_models_health_and_metrics(client, live_server):
    assert [m.id for m in client.models.list().data] == ["tiny-llava"]
    assert httpx.get(live_server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(live_server.url + "/metrics").text
    assert "# TYPE llavakit_generation_tokens_total counter" in text
    assert 'llavakit_requests_total{endpoint="/v1/chat/completions",status="200"}' in text
