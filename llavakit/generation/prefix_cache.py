"""Prefix reuse between generate calls: an LRU cache of image features keyed by image content, and a KV
prefix cache so that a prompt extending an earlier one (the next turn of a chat) only prefills its new tokens.

Both are bounded in bytes (and entries), live on the model (`model.prefix_cache`), and are used by `generate`;
the serving engine uses `FeatureCache` for its per-image features.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Any, Hashable

import torch

from llavakit.models.cache import DynamicCache

MiB = 1 << 20


def content_key(*parts: Any) -> str:
    """A digest of tensors' bytes (with dtype and shape) and of other values' repr: equal inputs, equal keys."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu").contiguous()
            h.update(f"tensor{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class FeatureCache:
    """LRU map key -> feature tensor, bounded by total bytes and optionally by entries."""

    def __init__(self, max_bytes: int = 256 * MiB, max_entries: int | None = None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._items: collections.OrderedDict[Hashable, torch.Tensor] = collections.OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        """The cached tensor (now most recently used), or None."""
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        """Store `value` (detached); evict the least recently used until within bounds. Too-big values are skipped."""
        size = _nbytes([value])
        if size > self.max_bytes:
            return
        if key in self._items:
            self.nbytes -= _nbytes([self._items.pop(key)])
        self._items[key] = value.detach()
        self.nbytes += size
        while self.nbytes > self.max_bytes or (self.max_entries is not None and len(self._items) > self.max_entries):
            _, old = self._items.popitem(last=False)
            self.nbytes -= _nbytes([old])

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


@dataclasses.dataclass(eq=False)
class _Entry:
    """The KV of one earlier call: keys/values for the first len(ids) positions of its sequence."""

    ids: torch.Tensor  # (T,) cpu token ids the cache covers
    images: str | None  # content key of that call's images and vision settings, None without images
    keys: list[torch.Tensor]  # per layer (1, KV, T, D); never written to (DynamicCache.update concatenates)
    values: list[torch.Tensor]
    nbytes: int


class PrefixCache:
    """KV prefixes of earlier batch-size-1 calls, LRU, bounded by entries and bytes, plus the feature cache.

    `enabled = False` turns both off for every call (generate's `prefix_cache=False` does so for one call).
    """

    def __init__(self, max_entries: int = 8, max_bytes: int = 1024 * MiB, feature_bytes: int = 256 * MiB) -> None:
        self.enabled = True
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.features = FeatureCache(max_bytes=feature_bytes)
        self._entries: list[_Entry] = []  # least recently used first
        self._state: Hashable = None  # the model weights the cached values were computed with
        self.hits = self.misses = 0
        self.reused_tokens = 0

    def check_state(self, state: Hashable) -> None:
        """Forget everything when the model's weights (or dtype/device) changed since the cached values."""
        if state != self._state:
            self.clear()
            self._state = state

    def lookup(self, ids: torch.Tensor, images: str | None, image_token: int | tuple[int, ...] | None
               ) -> tuple[int, DynamicCache | None]:
        """The longest reusable prefix of `ids` (T,) and a fresh cache holding it, or (0, None).

        At least one token is left to prefill. The prefix may cover image tokens only when the earlier call had
        the same images (same key) and no image token is left for the suffix; otherwise it stops before the
        first image token, so the suffix carries all images and the model sees them whole. `image_token` may be
        several placeholder ids (image and video): "images" then means all media, keyed together.
        """
        best, best_len = None, 0
        ids = ids.cpu()
        tokens = [] if image_token is None else [image_token] if isinstance(image_token, int) else list(image_token)
        is_media = torch.isin(ids, torch.tensor(tokens, dtype=ids.dtype))  # (T,)
        image_at = is_media.nonzero()
        first_image = int(image_at[0]) if len(image_at) else len(ids)
        for entry in self._entries:
            n = min(len(entry.ids), len(ids) - 1)
            differ = (entry.ids[:n] != ids[:n]).nonzero()
            length = int(differ[0]) if len(differ) else n
            if length > first_image and (entry.images != images or bool(is_media[length:].any())):
                length = first_image
            if length > best_len:
                best, best_len = entry, length
        if best is None:
            self.misses += 1
            return 0, None
        self._entries.remove(best)
        self._entries.append(best)
        self.hits += 1
        self.reused_tokens += best_len
        cache = DynamicCache()
        cache.key_cache = [k[..., :best_len, :] for k in best.keys]
        cache.value_cache = [v[..., :best_len, :] for v in best.values]
        return best_len, cache

    def store(self, ids: torch.Tensor, images: str | None, cache: DynamicCache) -> None:
        """Remember a finished call's cache, covering ids (T,); drops entries that are prefixes of it."""
        T = cache.get_seq_length()
        if T == 0 or len(ids) < T:
            return
        ids = ids[:T].cpu()
        keys = [k[..., :T, :] for k in cache.key_cache]
        values = [v[..., :T, :] for v in cache.value_cache]
        entry = _Entry(ids, images, keys, values, _nbytes(keys) + _nbytes(values))
        if entry.nbytes > self.max_bytes:
            return
        self._entries = [e for e in self._entries if not _covers(entry, e)]
        self._entries.append(entry)
        while len(self._entries) > self.max_entries or sum(e.nbytes for e in self._entries) > self.max_bytes:
            self._entries.pop(0)

    def clear(self) -> None:
        self._entries.clear()
        self.features.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries) + self.features.nbytes


def _covers(new: _Entry, old: _Entry) -> bool:
    """`new` makes `old` useless: same images and old's ids are a prefix of new's."""
    n = len(old.ids)
    return old.images == new.images and n <= len(new.ids) and torch.equal(new.ids[:n], old.ids)
