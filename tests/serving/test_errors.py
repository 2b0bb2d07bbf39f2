"""The bad-input catalogue: OpenAI-style errors with the right statuses, API keys, full queues, failing and
disconnecting requests, and the server staying up through all of them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.serving.conftest import data_url, start_server

openai = pytest.importorskip("openai")


def _post(server, body, path="/v1/chat/completions", **kwargs):
    return httpx.post(server.url + path, json=body, timeout=60, **kwargs)


def _assert_error(response, status, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("body, status, param", [
    ({"messages": HI, "temperature": 5}, 400, "temperature"),
    ({"messages": HI, "top_p": 0}, 400, "top_p"),
    ({"messages": HI, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": HI, "max_tokens": 10 ** 7}, 400, "max_tokens"),
    ({"messages": HI, "n": 0}, 400, "n"),
    ({"messages": HI, "n": 129}, 400, "n"),
    ({"messages": HI, "presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"messages": HI, "frequency_penalty": -3}, 400, "frequency_penalty"),
    ({"messages": HI, "min_p": 1.5}, 400, "min_p"),
    ({"messages": HI, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ({"messages": HI, "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ({"messages": HI, "logit_bias": {"99999999": 1}}, 400, "logit_bias"),
    ({"messages": HI, "frobnicate": 1}, 400, "frobnicate"),
    ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"messages": HI, "tool_choice": "auto"}, 400, "tool_choice"),
    ({"messages": HI, "response_format": {"type": "xml"}}, 400, "response_format.type"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}}, 400,
     "response_format.json_schema.schema"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "integer", "minimum": 5, "maximum": 2}}}}, 400, "response_format"),
    ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "bogus"}}}}, 400, "response_format"),
    ({"messages": HI, "guided_regex": "a{2"}, 400, "guided_regex"),
    ({"messages": HI, "guided_regex": "[^\\s\\S]"}, 400, "guided_regex"),
    ({"messages": HI, "guided_grammar": "start: undefined_rule"}, 400, "guided_grammar"),
    ({"messages": HI, "guided_choice": []}, 400, "guided_choice"),
    ({"messages": HI, "guided_regex": "a", "guided_choice": ["a"]}, 400, "guided_choice"),
    ({"messages": HI, "stop": [""]}, 400, "stop"),
    ({"messages": HI, "top_logprobs": 2}, 400, "top_logprobs"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "messages[0].content[0]"),
    ({"messages": []}, 422, "messages"),
    ({"messages": HI, "temperature": "hot"}, 422, "temperature"),
    ({"messages": HI, "model": "gpt-4"}, 404, "model"),
])
def test_invalid_requests(live_server, body, status, param):
    _assert_error(_post(live_server, body), status, param)


def test_not_json_and_unknown_route(live_server):
    response = httpx.post(live_server.url + "/v1/chat/completions", content=b"{nope", timeout=30)
    _assert_error(response, 400)
    _assert_error(httpx.get(live_server.url + "/v1/nothing-here", timeout=30), 404)


def test_image_limits(live_server, photos):
    image = {"type": "image_url", "image_url": {"url": data_url(photos["chelsea"])}}
    three = [{"role": "user", "content": [image, image, image, {"type": "text", "text": "x"}]}]
    assert "3 images" in _assert_error(_post(live_server, {"messages": three}), 400)["message"]
    huge = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                            + "A" * 3_000_000}}]}]
    _assert_error(_post(live_server, {"messages": huge}), 413)
    private = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}]
    assert "non-public" in _assert_error(_post(live_server, {"messages": private}), 400)["message"]
    local = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]
    assert "outside" in _assert_error(_post(live_server, {"messages": local}), 400)["message"]


def test_openai_client_raises_typed_errors(live_server):
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-llava", messages=HI, temperature=9)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=HI)


def test_a_failing_request_does_not_take_the_server_down(live_server, photos, monkeypatch):
    def broken(image):
        raise RuntimeError("vision tower exploded")

    monkeypatch.setattr(live_server.engine, "_image_features", broken)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(photos["rocket"])}},
                                          {"type": "text", "text": "x"}]}]
    assert "exploded" in _assert_error(_post(live_server, {"messages": image, "max_tokens": 3}), 500)["message"]
    monkeypatch.undo()
    assert _post(live_server, {"messages": image, "max_tokens": 3, "temperature": 0}).status_code == 200


def test_disconnect_mid_stream_frees_the_slot(live_server):
    body = {"messages": HI, "temperature": 0, "max_tokens": 400}
    full = _post(live_server, body).json()
    if full["choices"][0]["finish_reason"] != "length":
        pytest.skip("the tiny model stops early on this prompt")
    before = live_server.engine.metrics.get("cancelled_total")
    with httpx.stream("POST", live_server.url + "/v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as response:
        for line in response.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # the first real token: hang up
    deadline = time.time() + 20
    while live_server.engine.metrics.get("cancelled_total") == before and time.time() < deadline:
        time.sleep(0.05)
    assert live_server.engine.metrics.get("cancelled_total") == before + 1
    assert live_server.engine.rows == [] or all(not s.cancelled.is_set() for s in live_server.engine.rows)
    assert _post(live_server, {"messages": HI, "max_tokens": 2}).status_code == 200


@pytest.fixture(scope="module")
def locked_server(tiny_llava_dir):
    server = start_server(tiny_llava_dir, api_key="sekrit", max_queue=0)
    yield server
    server.close()


def test_api_key_and_full_queue(locked_server):
    _assert_error(_post(locked_server, {"messages": HI}), 401)
    _assert_error(_post(locked_server, {"messages": HI}, headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(locked_server.url + "/health").status_code == 200  # open without a key
    ok = {"Authorization": "Bearer sekrit"}
    assert httpx.get(locked_server.url + "/v1/models", headers=ok).status_code == 200
    _assert_error(_post(locked_server, {"messages": HI}, headers=ok), 429)
    client = openai.OpenAI(base_url=locked_server.url + "/v1", api_key="sekrit", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="tiny-llava", messages=HI)
