"""Prefix reuse in generate: a call that extends an earlier prompt reuses its KV and image features, and gives
the same tokens as a call without the caches (scores equal to fp32 rounding; bit-equal when only the
feature cache is used). Also the bounds of both caches and the serving engine's use of FeatureCache."""

import pytest
import torch
import transformers
from PIL import Image

from llavakit import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from llavakit.generation.prefix_cache import FeatureCache, PrefixCache, content_key
from llavakit.models.cache import DynamicCache

TURN_1 = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
OTHER_QUESTION = "USER: <image>\nDescribe the colours of it. ASSISTANT:"
FOLLOW_UP = " USER: And what is behind it? ASSISTANT:"
OPTS = dict(max_new_tokens=6, min_new_tokens=6, return_dict_in_generate=True, output_scores=True)


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def images(photos):
    return {name: Image.open(photos[name]).convert("RGB") for name in ("chelsea", "coffee")}


@pytest.fixture
def model(tiny_llava_dir):
    return LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)


class VisionCalls:
    """Counts image encodings (the projector's forward calls)."""

    def __init__(self, model):
        self.n = 0
        model.multi_modal_projector.register_forward_hook(lambda *_: setattr(self, "n", self.n + 1))


def inputs(processor, image, text):
    return dict(processor(images=image, text=text, return_tensors="pt"))


def second_turn(processor, first_sequence, pixel_values):
    """Turn 1's prompt + answer followed by a new user message, as a chat client would send it."""
    follow = processor.tokenizer(FOLLOW_UP, add_special_tokens=False, return_tensors="pt")["input_ids"]
    return dict(input_ids=torch.cat([first_sequence, follow], dim=1), pixel_values=pixel_values)


def assert_same(with_cache, without):
    assert torch.equal(with_cache.sequences, without.sequences)
    for a, b in zip(with_cache.scores, without.scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_second_chat_turn_reuses_kv_and_skips_the_image(model, processor, images):
    calls = VisionCalls(model)
    first = model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    turn_2 = second_turn(processor, first.sequences, inputs(processor, images["chelsea"], TURN_1)["pixel_values"])
    assert calls.n == 1
    reused_before = model.prefix_cache.reused_tokens
    cached = model.generate(**turn_2, **OPTS)
    assert calls.n == 1  # the image tokens came from the reused KV
    assert model.prefix_cache.reused_tokens - reused_before == first.sequences.shape[1] - 1
    fresh = model.generate(**turn_2, **OPTS, prefix_cache=False)
    assert calls.n == 2
    assert_same(cached, fresh)


def test_second_turn_tokens_equal_transformers(model, processor, images, tiny_llava_dir):
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    first = model.generate(**inputs(processor, images["coffee"], TURN_1), max_new_tokens=8)
    turn_2 = second_turn(processor, first, inputs(processor, images["coffee"], TURN_1)["pixel_values"])
    ours = model.generate(**turn_2, max_new_tokens=8)
    assert model.prefix_cache.hits >= 1
    assert torch.equal(ours, theirs.generate(**turn_2, max_new_tokens=8, do_sample=False))


def test_prompts_sharing_an_image_prefix(model, processor, images):
    calls = VisionCalls(model)
    model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    other = inputs(processor, images["chelsea"], OTHER_QUESTION)
    reused_before = model.prefix_cache.reused_tokens
    cached = model.generate(**other, **OPTS)
    n_shared = int((other["input_ids"] == model.config.image_token_index).nonzero()[-1, 1]) + 2  # "\n" too
    assert model.prefix_cache.reused_tokens - reused_before >= n_shared
    assert calls.n == 1
    assert_same(cached, model.generate(**other, **OPTS, prefix_cache=False))


def test_strict_prefix_prompt(model, processor, images):
    long = inputs(processor, images["chelsea"], TURN_1 + " It is a")
    short = inputs(processor, images["chelsea"], TURN_1)
    model.generate(**long, **OPTS)
    cached = model.generate(**short, **OPTS)
    assert model.prefix_cache.reused_tokens == short["input_ids"].shape[1] - 1  # all but the last token
    assert_same(cached, model.generate(**short, **OPTS, prefix_cache=False))


def test_different_image_reuses_only_the_text_before_it(model, processor, images):
    calls = VisionCalls(model)
    model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    other = inputs(processor, images["coffee"], TURN_1)
    reused_before = model.prefix_cache.reused_tokens
    cached = model.generate(**other, **OPTS)
    first_image = int((other["input_ids"][0] == model.config.image_token_index).nonzero()[0])
    assert model.prefix_cache.reused_tokens - reused_before == first_image
    assert calls.n == 2  # a new image is encoded
    assert_same(cached, model.generate(**other, **OPTS, prefix_cache=False))


def test_prompt_diverging_in_the_text_before_the_image(model, processor, images):
    model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    other = inputs(processor, images["chelsea"], "SYSTEM: Be brief. " + TURN_1)
    cached = model.generate(**other, **OPTS)
    assert_same(cached, model.generate(**other, **OPTS, prefix_cache=False))


def test_seeded_sampling_draws_the_same_tokens(model, processor, images):
    first = model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    turn_2 = second_turn(processor, first.sequences, inputs(processor, images["chelsea"], TURN_1)["pixel_values"])
    sample = dict(OPTS, do_sample=True, temperature=0.9, top_k=50)
    torch.manual_seed(7)
    cached = model.generate(**turn_2, **sample)
    assert model.prefix_cache.hits >= 1
    torch.manual_seed(7)
    assert_same(cached, model.generate(**turn_2, **sample, prefix_cache=False))


def test_feature_cache_alone_is_bit_identical(model, processor, images):
    """Without KV reuse, cached image features give exactly the same scores as encoding the image."""
    model.prefix_cache.max_entries = 0  # keep no KV prefixes, only features
    calls = VisionCalls(model)
    model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    other = inputs(processor, images["chelsea"], OTHER_QUESTION)
    cached = model.generate(**other, **OPTS)
    assert calls.n == 1 and model.prefix_cache.features.hits == 1 and len(model.prefix_cache) == 0
    fresh = model.generate(**other, **OPTS, prefix_cache=False)
    assert calls.n == 2
    assert torch.equal(cached.sequences, fresh.sequences)
    assert all(torch.equal(a, b) for a, b in zip(cached.scores, fresh.scores))


def test_vision_settings_are_part_of_the_feature_key(model, processor, images):
    model.prefix_cache.max_entries = 0
    calls = VisionCalls(model)
    x = inputs(processor, images["chelsea"], TURN_1)
    model.generate(**x, max_new_tokens=2)
    model.generate(**x, max_new_tokens=2, vision_feature_layer=-1)
    assert calls.n == 2


def test_the_continuation_does_not_change_the_cached_kv(model, processor, images):
    first = model.generate(**inputs(processor, images["chelsea"], TURN_1), **OPTS)
    entry = model.prefix_cache._entries[-1]
    saved = [k.clone() for k in entry.keys + entry.values]
    turn_2 = second_turn(processor, first.sequences, inputs(processor, images["chelsea"], TURN_1)["pixel_values"])
    model.generate(**turn_2, **OPTS)
    model.generate(**turn_2, **OPTS)
    assert all(torch.equal(a, b) for a, b in zip(saved, entry.keys + entry.values))


def test_switching_off(model, processor, images):
    x = inputs(processor, images["chelsea"], TURN_1)
    model.generate(**x, max_new_tokens=2, prefix_cache=False)
    assert len(model.prefix_cache) == 0 and len(model.prefix_cache.features) == 0
    model.prefix_cache.enabled = False
    model.generate(**x, max_new_tokens=2)
    assert len(model.prefix_cache) == 0 and len(model.prefix_cache.features) == 0
    model.generate(**x, max_new_tokens=2, prefix_cache=True)  # the call's switch wins
    assert len(model.prefix_cache) == 1 and len(model.prefix_cache.features) == 1


def test_batches_and_given_caches_bypass(model, processor, images):
    processor.tokenizer.padding_side = "left"
    batch = processor(images=[images["chelsea"], images["coffee"]], text=[TURN_1, "USER: <image>\nHi ASSISTANT:"],
                      padding=True, return_tensors="pt")
    model.generate(**batch, max_new_tokens=2)
    x = inputs(processor, images["chelsea"], TURN_1)
    model.generate(**x, max_new_tokens=2, cache=DynamicCache())
    assert len(model.prefix_cache) == 0 and model.prefix_cache.hits == 0


def test_changed_weights_clear_the_cache(model, processor, images):
    x = inputs(processor, images["chelsea"], TURN_1)
    model.generate(**x, max_new_tokens=2)
    with torch.no_grad():
        model.language_model.lm_head.weight.mul_(1.5)
    out = model.generate(**x, **OPTS)
    assert model.prefix_cache.hits == 0
    assert_same(out, model.generate(**x, **OPTS, prefix_cache=False))


def test_llava_next_second_turn(tiny_llava_next_dir, photos):
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir)
    processor = AutoProcessor.from_pretrained(tiny_llava_next_dir)
    x = dict(processor(images=Image.open(photos["astronaut"]).convert("RGB"), text=TURN_1, return_tensors="pt"))
    first = model.generate(**x, **OPTS)
    follow = processor.tokenizer(FOLLOW_UP, add_special_tokens=False, return_tensors="pt")["input_ids"]
    turn_2 = dict(x, input_ids=torch.cat([first.sequences, follow], dim=1))
    turn_2.pop("attention_mask")
    cached = model.generate(**turn_2, **OPTS)
    assert model.prefix_cache.hits == 1
    assert_same(cached, model.generate(**turn_2, **OPTS, prefix_cache=False))


# ---- the caches themselves ------------------------------------------------------------------------------
def test_feature_cache_is_lru_by_bytes_and_entries():
    cache = FeatureCache(max_bytes=3 * 400, max_entries=None)  # three (10, 10) fp32 tensors
    for i in range(3):
        cache.put(i, torch.full((10, 10), float(i)))
    assert cache.get(0) is not None  # 0 is now the most recent
    cache.put(3, torch.zeros(10, 10))
    assert 1 not in cache and {0, 2, 3} <= set(cache._items) and cache.nbytes == 1200
    cache.put("big", torch.zeros(40, 10))  # larger than the whole budget: not kept, nothing evicted
    assert "big" not in cache and len(cache) == 3
    by_count = FeatureCache(max_entries=2)
    for i in range(3):
        by_count.put(i, torch.zeros(1))
    assert list(by_count._items) == [1, 2] and by_count.get(0) is None and by_count.misses == 1


def _kv(T: int) -> DynamicCache:
    cache = DynamicCache()
    cache.update(torch.randn(1, 2, T, 4), torch.randn(1, 2, T, 4), 0)  # 2 * 2*T*4 floats
    return cache


def test_prefix_cache_bounds_and_matching():
    store = PrefixCache(max_entries=2, max_bytes=2 * 64 * 30)
    ids = torch.arange(1, 21)
    store.store(ids, None, _kv(20))
    length, cache = store.lookup(torch.cat([ids, torch.tensor([99, 98])]), None, image_token=None)
    assert length == 20 and cache.get_seq_length() == 20
    assert store.lookup(ids[:5], None, None)[0] == 4  # a strict prefix leaves one token to prefill
    assert store.lookup(torch.tensor([7, 8, 9]), None, None) == (0, None)
    store.store(ids + 100, None, _kv(20))
    store.store(ids + 200, None, _kv(20))  # over max_entries: the least recently used goes
    assert len(store) == 2 and store.lookup(ids, None, None)[0] == 0
    store.store(torch.arange(100), None, _kv(100))  # larger than max_bytes alone: not kept
    assert len(store) == 2


def test_prefix_cache_image_rules():
    store = PrefixCache()
    ids = torch.tensor([1, 5, 9, 9, 9, 6, 7])  # 9 = image token
    store.store(ids, "img-a", _kv(7))
    extended = torch.cat([ids, torch.tensor([8, 8])])
    assert store.lookup(extended, "img-a", 9)[0] == 7
    assert store.lookup(extended, "img-b", 9)[0] == 2  # another image: only the text before it
    assert store.lookup(torch.tensor([1, 5, 9, 9, 9, 9, 6]), "img-a", 9)[0] == 2  # image tokens left to prefill


def test_content_key_covers_bytes_dtype_and_shape():
    x = torch.arange(6.0)
    assert content_key(x, "a") == content_key(x.clone(), "a")
    assert len({content_key(x, "a"), content_key(x, "b"), content_key(x.double(), "a"),
                content_key(x.view(2, 3), "a"), content_key(x + 1, "a")}) == 5
    assert content_key(x.bfloat16()) != content_key(x.half())
