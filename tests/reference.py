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
# 5.24: chat messages may be dataclasses, pydantic models, or a conversation object with `.messages`
CHAT_MESSAGE_OBJECTS = VERSION >= Version("5.24.0")
# 5.24: beam sampling sorts the sampled candidates by score before choosing beams (5.23 kept the draw order);
# llavakit follows 5.24+, so seeded beam sampling compares only with those releases
BEAM_SAMPLING_SORTS_CANDIDATES = VERSION >= Version("5.24.0")
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


def image_features(out: Any) -> torch.Tensor | None:
    """The projected image features of a forward output, in the layout transformers 5.23 returned them as
    `image_hidden_states`: (total_image_tokens, H) for LLaVA / NeXT, (num_images, P, H) for ViP.

    From 5.24 (and in llavakit) they are `out.image_outputs.pooler_output`: a list of one (tokens_i, H) per
    image (LLaVA / NeXT) or the (num_images, P, H) tensor (ViP).
    """
    if is_transformers(out) and not IMAGE_OUTPUTS:
        return out.image_hidden_states
    if out.image_outputs is None:
        return None
    features = out.image_outputs.pooler_output
    return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features



def video_features(out: Any) -> torch.Tensor | None:
    """All videos' projected features of a forward output as one flat vector (total_video_tokens * H,).

    From 5.24 (and in llavakit) they are `out.video_outputs.pooler_output`, (num_videos, tokens, H); 5.23 gave
    `video_hidden_states`, which NeXT-Video had already flattened, so the flat layout is the common one.
    """
    if is_transformers(out) and not IMAGE_OUTPUTS:
        features = out.video_hidden_states
    else:
        features = None if out.video_outputs is None else out.video_outputs.pooler_output
    return None if features is None else features.reshape(-1)

# output keys transformers 5.23 used, by their 5.24+ (and llavakit) names
_NEW_KEYS = {"past_key_values": "cache", "image_hidden_states": "image_outputs",
             "video_hidden_states": "video_outputs"}


def newest_keys(out: Any) -> list[str]:
    """An output's keys under the newest names, so llavakit's keys compare to any release's."""
    return [_NEW_KEYS.get(k, k) for k in out.keys()]


def tuple_image_features(item: Any) -> torch.Tensor:
    """The image features in a `return_dict=False` tuple's last item: `image_outputs.to_tuple()` from 5.24
    (pooler_output its second element), the features tensor before; as `image_features` lays them out."""
    if not isinstance(item, tuple):
        return item
    features = item[1]
    return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features


# llavakit's image processors compute what transformers' PIL backend computes. With torchvision installed,
# transformers (5.23 and 5.25 alike) loads its torchvision backend by default, whose resize differs from
# Pillow's by a grey level here and there; the tests therefore compare with the PIL backend by name.
def hf_processor(path: Any, **kwargs: Any) -> Any:
    """transformers.AutoProcessor with the PIL image backend (given as an image processor: a `backend=` keyword
    would reach the tokenizer too)."""
    processor = transformers.AutoProcessor.from_pretrained(path, **kwargs)
    if hasattr(processor, "image_processor"):
        processor.image_processor = hf_image_processor(path, **kwargs)
    return processor


def hf_image_processor(path: Any, **kwargs: Any) -> Any:
    """transformers.AutoImageProcessor with the PIL backend."""
    return transformers.AutoImageProcessor.from_pretrained(path, backend="pil", **kwargs)


def comparable_stream(pieces: list[str]) -> list[str] | None:
    """Streamed text pieces as far as they compare with this release's streamers: llavakit chunks as 5.24+ does
    (words and letters at once, a newline's token kept as context), so the pieces themselves from 5.24 on.
    Before, nothing compares: 5.23 chunks otherwise and drops a leading space after each newline."""
    return list(pieces) if STREAMER_EMITS_WORDS else None


def same_image_outputs(ours: Any, theirs: Any) -> bool:
    """Whether llavakit's `image_outputs` has the layout of transformers' (from 5.24; True before, where
    transformers returns none): the same keys, the same kept hidden states, the same last hidden state."""
    if not IMAGE_OUTPUTS:
        return True
    a, b = ours.image_outputs, theirs.image_outputs
    if a is None or b is None:
        return a is None and b is None
    return (a.keys() == list(b.keys())
            and [s is None for s in a.hidden_states] == [s is None for s in b.hidden_states]
            and torch.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=0))
