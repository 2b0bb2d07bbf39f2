"""The fixed-shape decode step: same logits as the model's forward, same greedy tokens when compiled.

On CPU the compiled path is traced with dynamo's "eager" backend (fullgraph=True: any graph break fails),
which checks the step is compilable without inductor's minutes of codegen; the CUDA test compiles for real.
"""

import pytest
import torch
import transformers

from llavakit import LlavaForConditionalGeneration
from llavakit.generation.engine import CACHE_BUCKET, DecodeStep, bucketed, language_model
from llavakit.models.cache import DynamicCache, StaticCache
from tests.parity import image_prompt, left_pad, random_pixels


@pytest.fixture(scope="module")
def mistral(tiny_mistral_llava_dir):
    """(ours, theirs) for the tiny Mistral LLaVA (8-token sliding window, GQA)."""
    return (LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir),
            transformers.LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir).eval())


def padded_batch():
    """Two left-padded image prompts (the first longer than the sliding window) with their pixels."""
    ids, mask, _ = left_pad([image_prompt(1, seed=0), image_prompt(1, seed=1)[:-2]])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=random_pixels(2))


def test_bucketed_lengths():
    assert bucketed(1) == bucketed(CACHE_BUCKET) == CACHE_BUCKET and bucketed(CACHE_BUCKET + 1) == 2 * CACHE_BUCKET


def test_language_model_finds_the_decoder(mistral):
    ours = mistral[0]
    assert language_model(ours) is ours.language_model
    assert language_model(torch.nn.Linear(2, 2)) is None


@torch.no_grad()
def test_step_logits_equal_the_forward_path(mistral):
    ours = mistral[0]
    inputs = padded_batch()
    mask = inputs["attention_mask"]
    B, T = inputs["input_ids"].shape
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    static, dynamic = StaticCache(T + 8), DynamicCache()
    first = ours(**inputs, position_ids=positions, cache=static, logits_to_keep=1)
    ours(**inputs, position_ids=positions, cache=dynamic, logits_to_keep=1)
    step = DecodeStep(language_model(ours), compile=False)
    step.start(static, mask, B)
    tokens, pos = first.logits[:, -1].argmax(-1), positions[:, -1] + 1
    for _ in range(6):  # runs past the 8-token window from the short row's first real token
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=-1)
        expected = ours(input_ids=tokens[:, None], position_ids=pos[:, None], attention_mask=mask,
                        cache=dynamic).logits[:, -1]  # (B, V)
        got = step(tokens, pos)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        tokens, pos = got.argmax(-1), pos + 1
    assert static.get_seq_length() == dynamic.get_seq_length() == T + 6


def test_compiled_step_gives_the_same_greedy_tokens(mistral):
    ours, theirs = mistral
    inputs = padded_batch()
    ours.__dict__["_compiled_decode_step"] = DecodeStep(language_model(ours), compile=True, backend="eager")
    try:
        compiled = ours.generate(**inputs, max_new_tokens=10, compile=True, prefix_cache=False,
                                 return_dict_in_generate=True)
        again = ours.generate(**inputs, max_new_tokens=10, compile=True, prefix_cache=False)  # reuses the buffers
    finally:
        del ours.__dict__["_compiled_decode_step"]
    dynamic = ours.generate(**inputs, max_new_tokens=10, cache_implementation="dynamic", prefix_cache=False)
    static = ours.generate(**inputs, max_new_tokens=10, compile=False, prefix_cache=False)
    with torch.no_grad():
        reference = theirs.generate(**inputs, max_new_tokens=10, do_sample=False)
    for out in (compiled.sequences, again, dynamic, static):
        assert torch.equal(out, reference), (out, reference)
    cache = compiled.cache
    assert isinstance(cache, StaticCache) and cache.max_cache_len == CACHE_BUCKET
    assert cache.get_seq_length() == inputs["input_ids"].shape[1] + 9


def test_compile_needs_a_static_cache(mistral):
    inputs = padded_batch()
    with pytest.raises(ValueError, match="compile=True needs a static cache"):
        mistral[0].generate(**inputs, max_new_tokens=2, compile=True, cache_implementation="dynamic")
    with pytest.raises(ValueError, match="compile=True needs the KV cache"):
        mistral[0].generate(**inputs, max_new_tokens=2, compile=True, use_cache=False)
    with pytest.raises(ValueError, match="cache_implementation must be one of"):
        mistral[0].generate(**inputs, max_new_tokens=2, cache_implementation="paged")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_matches_the_eager_path(tiny_mistral_llava_dir, dtype):
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir, dtype=dtype, device_map="cuda")
    inputs = {k: v.to("cuda") for k, v in padded_batch().items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    eager = ours.generate(**inputs, max_new_tokens=12, compile=False, prefix_cache=False)
    for _ in range(2):  # the first call records the CUDA graphs, the second replays them
        graphed = ours.generate(**inputs, max_new_tokens=12, prefix_cache=False)  # compiled by default on CUDA
        assert torch.equal(graphed, eager)
    assert "_compiled_decode_step" in ours.__dict__
