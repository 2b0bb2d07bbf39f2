"""Sampling defaults for requests that leave them out: the checkpoint's generation_config, as vLLM does.

OpenAI's API samples at temperature 1 by default; a checkpoint whose generation_config does not sample
(transformers' do_sample=False, what llava-hf checkpoints ship) is meant to be decoded greedily, so a
request without 'temperature' gets temperature 0 there, and the config's temperature / top_p otherwise.
"""

from __future__ import annotations

from typing import Any

from llavakit.serving.schemas import SamplingParams


def sampling_defaults(generation_config: Any) -> dict[str, float]:
    """{field: value} for the SamplingParams fields a request may omit."""
    if generation_config is None:
        return {}
    if not getattr(generation_config, "do_sample", False):
        return {"temperature": 0.0}
    defaults = {"temperature": min(max(float(generation_config.temperature), 0.0), 2.0)}
    top_p = getattr(generation_config, "top_p", None)
    if top_p is not None and 0.0 < top_p <= 1.0:
        defaults["top_p"] = float(top_p)
    return defaults


def apply_defaults(sampling: SamplingParams, body: dict[str, Any], defaults: dict[str, float]) -> None:
    """Fill each default into `sampling` unless the request body set that field itself."""
    for name, value in defaults.items():
        if body.get(name) is None:
            setattr(sampling, name, value)
