"""Requests without sampling fields follow the checkpoint's generation_config (greedy for llava-hf ones)."""

from __future__ import annotations

import httpx

from llavakit.generation.config import GenerationConfig
from llavakit.serving.defaults import apply_defaults, sampling_defaults
from llavakit.serving.schemas import SamplingParams
from tests.serving.conftest import greedy_reference


def test_a_config_that_does_not_sample_means_greedy():
    assert sampling_defaults(GenerationConfig(bos_token_id=1, eos_token_id=2)) == {"temperature": 0.0}
    assert sampling_defaults(None) == {}


def test_a_sampling_config_gives_its_temperature_and_top_p():
    config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8)
    assert sampling_defaults(config) == {"temperature": 0.7, "top_p": 0.8}


def test_what_the_request_sets_wins():
    sampling = SamplingParams(temperature=1.2, top_p=0.5)
    apply_defaults(sampling, {"temperature": 1.2}, {"temperature": 0.7, "top_p": 0.8})
    assert (sampling.temperature, sampling.top_p) == (1.2, 0.8)


def test_request_without_temperature_is_greedy_on_a_greedy_checkpoint(live_server):
    assert not live_server.model.generation_config.do_sample
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 12}
    answers = [httpx.post(live_server.url + "/v1/chat/completions", json=body, timeout=60).json()
               ["choices"][0]["message"]["content"] for _ in range(2)]
    expected = greedy_reference(live_server, [{"role": "user", "content": [
        {"type": "text", "text": "Tell me a story."}]}], [], 12)
    assert answers == [expected, expected]
