"""Structured output in the server: response_format json_schema / json_object and vLLM's guided_* options,
decoded under llguidance masks inside the continuous batch, next to free requests."""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Literal

import pytest

from tests.serving.conftest import greedy_reference

openai = pytest.importorskip("openai")
pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

# Bounded fields: a random-weight model always completes it within the token limit.
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["animal", "count", "name", "tags"],
          "properties": {"animal": {"enum": ["cat", "dog", "rocket"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 999},
                         "name": {"type": "string", "maxLength": 8},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "photo", "schema": SCHEMA, "strict": True}}
ASK = [{"role": "user", "content": "Describe the photo as JSON"}]


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _valid(text: str) -> dict:
    value = json.loads(text)
    jsonschema.validate(value, SCHEMA)
    return value


def test_json_schema_greedy_sampled_and_streamed_all_validate(client):
    greedy = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=80, temperature=0,
                                            response_format=FORMAT)
    assert greedy.choices[0].finish_reason == "stop"
    _valid(greedy.choices[0].message.content)
    sampled = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=80, temperature=1.0,
                                             seed=3, n=4, response_format=FORMAT)
    assert [_valid(c.message.content) is not None for c in sampled.choices] == [True] * 4
    chunks = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=80, temperature=0,
                                            response_format=FORMAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        greedy.choices[0].message.content


def test_openai_parse_with_a_pydantic_model(client):
    class Photo(pydantic.BaseModel):
        animal: Literal["cat", "dog"]
        legs: int = pydantic.Field(ge=0, le=8)
        indoor: bool

    reply = client.chat.completions.parse(model="tiny-llava", messages=ASK, max_tokens=60, temperature=0.8, seed=1,
                                          response_format=Photo)
    photo = reply.choices[0].message.parsed
    assert isinstance(photo, Photo) and photo.animal in ("cat", "dog") and 0 <= photo.legs <= 8


def test_json_object_output_parses(client, live_server):
    # The tiny model never closes a free-form object by itself; favouring "{}" lets it finish at once. The mask
    # still applies: "{}" is the only favoured token and it must be an allowed one.
    empty = live_server.processor.tokenizer.convert_tokens_to_ids("{}")
    reply = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=20, temperature=0,
                                           response_format={"type": "json_object"}, logit_bias={str(empty): 50})
    assert json.loads(reply.choices[0].message.content) == {} and reply.choices[0].finish_reason == "stop"
    cut = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=6, temperature=0,
                                         response_format={"type": "json_object"})
    assert cut.choices[0].message.content.startswith("{") and cut.choices[0].finish_reason == "length"


@pytest.mark.parametrize("field, value, check", [
    ("guided_regex", r"[a-z]{3,8}@[a-z]{2,6}\.(com|org)",
     lambda text: re.fullmatch(r"[a-z]{3,8}@[a-z]{2,6}\.(com|org)", text)),
    ("guided_choice", ["cat", "dog", "bird"], lambda text: text in ("cat", "dog", "bird")),
    ("guided_grammar", 'root ::= "yes" | "no" | "maybe " [0-9]', lambda text: re.fullmatch(r"yes|no|maybe \d", text)),
    ("guided_grammar", 'start: "(" NUM ("," NUM)~0..3 ")"\nNUM: /[0-9]{1,3}/',
     lambda text: re.fullmatch(r"\(\d{1,3}(,\d{1,3}){0,3}\)", text)),
    ("guided_json", json.dumps(SCHEMA), _valid),
])
def test_guided_options(client, field, value, check):
    for seed in (0, 1):
        reply = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=80, temperature=1.0,
                                               seed=seed, extra_body={field: value})
        assert reply.choices[0].finish_reason == "stop"
        assert check(reply.choices[0].message.content), reply.choices[0].message.content


def test_completions_endpoint_guided_regex(client):
    reply = client.completions.create(model="tiny-llava", prompt="USER: a date? ASSISTANT:", max_tokens=20,
                                      temperature=0, extra_body={"guided_regex": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"})
    assert re.fullmatch(r"20\d\d-[01]\d-[0-3]\d", reply.choices[0].text)


def test_constrained_and_free_requests_share_the_batch(live_server, monkeypatch):
    """8 requests at once, every other one under the schema: constrained rows validate, free rows equal
    model.generate alone, and at least one decode step held both kinds."""
    engine, mixes = live_server.engine, []
    real_step = engine._step

    def step():
        mixes.append({s.matcher is not None for s in engine.rows})
        real_step()

    monkeypatch.setattr(engine, "_step", step)
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key="x", max_retries=0, timeout=300)
    prompts = ["Hi", "What is this?", "Tell me a story", "Count to ten"]

    def ask(i: int) -> str:
        fields = {"response_format": FORMAT} if i % 2 else {}
        return client.chat.completions.create(model="tiny-llava", max_tokens=40, temperature=0, messages=[
            {"role": "user", "content": prompts[i // 2]}], **fields).choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(ask, range(8), timeout=300))
    for i, text in enumerate(outputs):
        if i % 2:
            _valid(text)
        else:
            assert text == greedy_reference(live_server, [{"role": "user", "content": prompts[i // 2]}], [], 40)
    assert {True, False} in mixes


def test_unsatisfiable_constraint_is_a_400_and_the_server_goes_on(client):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "minLength": 9,
                                                                          "maxLength": 2}}}
    with pytest.raises(openai.BadRequestError, match="minLength"):
        client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=10, response_format=bad)
    with pytest.raises(openai.BadRequestError, match="regex"):
        client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=10,
                                       extra_body={"guided_regex": "(unclosed"})
    ok = client.chat.completions.create(model="tiny-llava", messages=ASK, max_tokens=40, temperature=0,
                                        response_format=FORMAT)
    _valid(ok.choices[0].message.content)
