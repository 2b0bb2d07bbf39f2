"""StaticCache: pre-allocated buffers that behave like DynamicCache (same keys/values seen by attention)."""

import pytest
import torch

from llavakit.models.cache import DynamicCache, StaticCache


def kv(T, seed, B=2, KV=3, D=4):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, KV, T, D, generator=gen), torch.randn(B, KV, T, D, generator=gen)


def filled_pair(steps=(5, 1, 1), layers=2, max_len=10):
    """A DynamicCache and a StaticCache fed the same updates; returns them and the last returned views."""
    dynamic, static = DynamicCache(), StaticCache(max_len)
    for i, T in enumerate(steps):
        for layer in range(layers):
            k, v = kv(T, seed=10 * i + layer)
            dk, dv = dynamic.update(k, v, layer)
            sk, sv = static.update(k, v, layer)
            assert torch.equal(dk, sk) and torch.equal(dv, sv)
    return dynamic, static


def test_update_returns_what_a_dynamic_cache_returns():
    dynamic, static = filled_pair()
    assert static.get_seq_length() == dynamic.get_seq_length() == 7
    assert len(static) == 2 and static.keys[0].shape == (2, 3, 10, 4)
    for a, b in zip(dynamic.to_legacy_cache(), static.to_legacy_cache()):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_buffers_are_allocated_once():
    static = StaticCache(8)
    static.update(*kv(3, 0), 0)
    buffer = static.keys[0]
    static.update(*kv(1, 1), 0)
    assert static.keys[0] is buffer and static.get_seq_length() == 4


def test_fixed_shape_mode_writes_at_the_index_and_returns_whole_buffers():
    static = StaticCache(6)
    static.update(*kv(2, 0), 0)
    k, v = kv(1, 1)
    static.position = torch.tensor([4])
    full_k, full_v = static.update(k, v, 0)
    assert full_k.shape == (2, 3, 6, 4) and torch.equal(full_k[:, :, 4:5], k) and torch.equal(full_v[:, :, 4:5], v)
    assert static.get_seq_length() == 2  # the caller advances the lengths
    static.position = None
    static.advance(3)
    assert static.get_seq_length() == 5


def test_crop_reorder_load_and_to_dynamic():
    dynamic, static = filled_pair()
    length = static.get_seq_length()
    static.crop(5 - length)  # a negative count of positions to drop, as transformers 5.24+ takes it
    dynamic.crop(5 - length)
    assert static.get_seq_length() == dynamic.get_seq_length() == 5 and torch.equal(static.key_cache[1], dynamic.key_cache[1])
    rows = torch.tensor([1])
    static.reorder_cache(rows)
    dynamic.reorder_cache(rows)
    assert static.keys[0].shape[0] == 1 and torch.equal(static.value_cache[0], dynamic.value_cache[0])
    copy = StaticCache(12).load(dynamic)
    assert copy.get_seq_length() == 5 and torch.equal(copy.key_cache[1], dynamic.key_cache[1])
    back = copy.to_dynamic()
    assert isinstance(back, DynamicCache) and torch.equal(back.value_cache[0], dynamic.value_cache[0])
    assert back.key_cache[0].data_ptr() != copy.keys[0].data_ptr()  # a copy, not a view of the buffers


def test_overflow_and_batch_mismatch_are_clear_errors():
    static = StaticCache(4)
    static.update(*kv(3, 0), 0)
    with pytest.raises(ValueError, match="holds 4 positions"):
        static.update(*kv(2, 1), 0)
    with pytest.raises(ValueError, match="batch size 2"):
        static.update(*kv(1, 1, B=3), 0)
    with pytest.raises(IndexError, match="layer 5"):
        static.update(*kv(1, 1), 5)
    with pytest.raises(ValueError, match="max_cache_len"):
        StaticCache(0)
    with pytest.raises(ValueError, match="empty"):
        static.load(DynamicCache())


def test_crop_takes_a_negative_count_as_transformers_does():
    dynamic, static = filled_pair()
    length = dynamic.get_seq_length()
    for cache in (dynamic, static):
        cache.crop(0)
        assert cache.get_seq_length() == length  # no-op
        cache.crop(-2)
        assert cache.get_seq_length() == length - 2
        with pytest.raises(ValueError, match=r"crop\(3\): pass a negative number"):
            cache.crop(3)
        cache.reset()
        assert cache.get_seq_length() == 0
    assert len(static.keys) == 2  # reset keeps the buffers


def test_negative_crop_matches_transformers_dynamic_cache():
    import transformers

    ours, _ = filled_pair()
    theirs = transformers.DynamicCache()
    for i, (k, v) in enumerate(zip(ours.key_cache, ours.value_cache)):
        theirs.update(k, v, i)
    ours.crop(-3)
    theirs.crop(-3)
    assert ours.get_seq_length() == theirs.get_seq_length() == 4
