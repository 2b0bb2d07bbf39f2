"""The OpenAI request fields beyond the basics, through the official openai client: n, penalties, min_p,
top_k, logit_bias, max_completion_tokens, usage in streams, finish_reason values, unknown fields."""

from __future__ import annotations

import pytest
import torch

from tests.serving.conftest import greedy_reference

openai = pytest.importorskip("openai")

HI = [{"role": "user", "content": "Hi"}]
STORY = [{"role": "user", "content": "Tell me a story"}]
REPEATS = [{"role": "user", "content": "What is this?"}]  # the tiny model's greedy answer repeats tokens


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def _ask(client, messages=HI, **fields):
    fields.setdefault("max_tokens", 8)
    return client.chat.completions.create(model="tiny-llava", messages=messages, **fields)


def test_n_greedy_choices_each_equal_the_single_answer(client, live_server):
    reply = _ask(client, n=3, temperature=0)
    expected = greedy_reference(live_server, HI, [], 8)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [expected] * 3
    assert reply.usage.completion_tokens == 3 * _ask(client, temperature=0).usage.completion_tokens


def test_n_sampled_choices_are_seeded_and_differ(client):
    first = _ask(client, STORY, n=4, temperature=1.0, seed=11, max_tokens=12)
    again = _ask(client, STORY, n=4, temperature=1.0, seed=11, max_tokens=12)
    texts = [c.message.content for c in first.choices]
    assert texts == [c.message.content for c in again.choices]
    assert len(set(texts)) > 1  # each choice has its own generator (seed + index)


def test_n_streamed_choices_join_to_the_non_streamed_ones(client):
    whole = _ask(client, STORY, n=2, temperature=1.0, seed=5, max_tokens=10)
    chunks = list(_ask(client, STORY, n=2, temperature=1.0, seed=5, max_tokens=10, stream=True,
                       stream_options={"include_usage": True}))
    texts, finishes = ["", ""], [None, None]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.message.content for c in whole.choices]
    assert finishes == [c.finish_reason for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


class _OpenAIPenalties:
    """The reference: OpenAI's documented formula, logit - frequency * count - presence * (count > 0),
    over the tokens generated so far."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids, scores):
        generated = input_ids[0, self.prompt_length:]
        counts = torch.bincount(generated, minlength=scores.shape[-1]).to(scores.dtype)
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 2.0), (-1.0, 0.5)])
def test_presence_and_frequency_penalties_match_the_formula(client, live_server, presence, frequency):
    reply = _ask(client, REPEATS, temperature=0, max_tokens=24, presence_penalty=presence,
                 frequency_penalty=frequency)
    text = live_server.processor.apply_chat_template(REPEATS, add_generation_prompt=True)
    inputs = live_server.processor(text=text, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = live_server.model.generate(**inputs, max_new_tokens=24, do_sample=False,
                                         logits_processor=[_OpenAIPenalties(n, presence, frequency)])
    assert reply.choices[0].message.content == live_server.processor.decode(out[0, n:], skip_special_tokens=True)
    assert reply.choices[0].message.content != greedy_reference(live_server, REPEATS, [], 24)  # it acted


def test_min_p_one_and_top_k_one_are_greedy(client, live_server):
    expected = greedy_reference(live_server, STORY, [], 10)
    assert _ask(client, STORY, temperature=1.0, extra_body={"min_p": 1.0}, max_tokens=10).choices[0].message.content == expected
    assert _ask(client, STORY, temperature=1.0, extra_body={"top_k": 1}, max_tokens=10).choices[0].message.content \
        == expected


def test_logit_bias_forces_and_bans_tokens(client, live_server):
    tokenizer = live_server.processor.tokenizer
    word = tokenizer.convert_tokens_to_ids("hello")
    forced = _ask(client, temperature=0, max_tokens=5, logit_bias={str(word): 100})
    assert forced.choices[0].message.content == tokenizer.decode([word] * 5)
    first = tokenizer.encode(greedy_reference(live_server, HI, [], 1), add_special_tokens=False)[-1]
    banned = _ask(client, temperature=0, max_tokens=1, logprobs=True, logit_bias={str(first): -100})
    assert banned.choices[0].logprobs.content[0].token != tokenizer.decode([first])


def test_finish_reasons_and_max_completion_tokens(client, live_server):
    eos = live_server.processor.tokenizer.eos_token_id
    ended = _ask(client, temperature=0, logit_bias={str(eos): 100})
    assert ended.choices[0].finish_reason == "stop" and ended.choices[0].message.content == ""
    assert ended.usage.completion_tokens == 1
    capped = client.chat.completions.create(model="tiny-llava", messages=STORY, temperature=0,
                                            max_completion_tokens=3, max_tokens=50)  # the newer name wins
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3


def test_unknown_fields_are_refused_and_bookkeeping_fields_accepted(client):
    with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: frobnicate"):
        _ask(client, extra_body={"frobnicate": 1})
    with pytest.raises(openai.BadRequestError, match="tool calling"):
        _ask(client, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    reply = _ask(client, temperature=0, user="u-1", metadata={"run": "7"}, store=False, tool_choice="none",
                 service_tier="auto")
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_completions_endpoint_n_and_penalties(client, live_server):
    reply = client.completions.create(model="tiny-llava", prompt="USER: Hi ASSISTANT:", max_tokens=6, temperature=0,
                                      n=2, frequency_penalty=1.0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == reply.choices[1].text
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="tiny-llava", prompt="x", max_tokens=2, echo=True)
