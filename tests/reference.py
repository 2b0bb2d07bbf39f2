"""The transformers release the tests compare against, and every way its API differs between the releases CI runs.

CI runs the suite against the newest transformers release and a pinned older one (5.23.0). llavakit always follows
the newest; the reference model's names and layouts depend on the installed release. Tests read transformers
outputs and build transformers calls through these helpers only, so no version check lives in a test file.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from packaging.version import Version

VERSION = Version(transformers.__version__)

# 5.24: forward(past_key_values=) -> forward(cache=), output.past_key_values -> output.cache,
# image_hidden_states -> image_outputs (BaseModelOutputWithPooling), streamers chunk text per word
CACHE_RENAMED = VERSION >= Version("5.24.0")
IMAGE_OUTPUTS = VERSION >= Version("5.24.0")
STREAMER_EMITS_WORDS = VERSION >= Version("5.24.0")
# 5.24: batch_decode([]) gives [] (it gave [""])
EMPTY_BATCH_DECODE = [] if VERSION >= Version("5.24.0") else [""]


def is_transformers(model: Any) -> bool:
    return type(model).__module__.startswith("transformers.")


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The forward keyword that passes a KV cache to `model` (llavakit's always takes the newest name)."""
    if is_transformers(model) and not CACHE_RENAMED:
        return {"past_key_values": cache}
    return {"cache": cache}


def output_cache(out: Any) -> Any:
    """The KV cache of a forward output, whichever release (or llavakit) made it."""
    if is_transformers(out) and not CACHE_RENAMED:
        return out.past_key_values
    return out.cache
