"""Stopping criteria: decide after each new token which rows of the batch are done.

Each is a callable `(input_ids (B, T), scores) -> (B,) bool`, the transformers protocol. Stop strings
are matched on the text of the newest tokens, with the same rule as transformers' StopStringCriteria.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Sequence

import torch


class StoppingCriteriaList(list):
    """A row is done when any criterion says so."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
        for criterion in self:
            done = done | criterion(input_ids, scores, **kwargs).to(done.device)
        return done


class MaxLengthCriteria:
    """Every row is done once the sequence (prompt included) has `max_length` tokens."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        done = input_ids.shape[-1] >= self.max_length
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class MaxTimeCriteria:
    """Every row is done once `max_time` seconds have passed since `initial_timestamp` (default: creation)."""

    def __init__(self, max_time: float, initial_timestamp: float | None = None) -> None:
        if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or max_time <= 0:
            raise ValueError(f"max_time must be a number of seconds > 0, got {max_time!r}")
        self.max_time = float(max_time)
        self.initial_timestamp = time.time() if initial_timestamp is None else initial_timestamp

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        done = time.time() - self.initial_timestamp > self.max_time
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)


class EosTokenCriteria:
    """A row is done when its last token is one of the end-of-sequence ids."""

    def __init__(self, eos_token_id: int | Sequence[int] | torch.Tensor) -> None:
        if not isinstance(eos_token_id, torch.Tensor):
            eos_token_id = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        self.eos_token_id = eos_token_id.reshape(-1)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        return torch.isin(input_ids[:, -1], self.eos_token_id.to(input_ids.device))


class StopStringCriteria:
    """A row is done when a stop string appears in its text and ends inside the newest token.

    "Ends inside the newest token" is transformers' rule: tokens "st" + "opera" stop on "stop" (the string is
    kept in the output, and the token may run past it), but "stop" + "at" does not stop, since the match is
    old. Each token's text is what it adds after a fixed prefix, so SentencePiece's "▁" spaces count, and
    byte tokens (<0x0A>, GPT-2 byte-level symbols) are matched as raw bytes.
    """

    def __init__(self, tokenizer: Any, stop_strings: str | Sequence[str]) -> None:
        stop_strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not stop_strings or not all(isinstance(s, str) and s for s in stop_strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {stop_strings!r}")
        self.stop_strings = tuple(stop_strings)
        self.targets = [s.encode("utf-8") for s in stop_strings]
        # A token adds at least one byte, so the newest len(target) tokens always cover a match.
        self.window = max(len(t) for t in self.targets)
        self.pieces = TokenBytes(tokenizer)

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        done = [self._row_matches(row) for row in input_ids[:, -self.window:].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _row_matches(self, ids: list[int]) -> bool:
        pieces = [self.pieces(i) for i in ids]
        text = b"".join(pieces)
        last_start = len(text) - len(pieces[-1])  # where the newest token's bytes begin
        for target in self.targets:
            # Occurrences ending inside the newest token start at or after this offset.
            start = text.find(target, max(0, last_start - len(target) + 1))
            if start != -1 and start + len(target) > last_start:
                return True
        return False


class TokenBytes:
    """The bytes each token id adds to decoded text, computed on first use and cached."""

    PREFIX = "abcdef"
    _BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.prefix_ids = list(tokenizer.encode(self.PREFIX, add_special_tokens=False))
        self.byte_level = _is_byte_level(tokenizer)
        self.byte_decoder = {ch: b for b, ch in gpt2_bytes_to_unicode().items()} if self.byte_level else {}
        self.cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        if token_id not in self.cache:
            self.cache[token_id] = self._compute(token_id)
        return self.cache[token_id]

    def _compute(self, token_id: int) -> bytes:
        token = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(token, str):
            if self.byte_level and token and all(ch in self.byte_decoder for ch in token):
                return bytes(self.byte_decoder[ch] for ch in token)
            byte = self._BYTE_TOKEN.fullmatch(token)
            if byte and not self.byte_level:
                return bytes([int(byte.group(1), 16)])
        # Decoded after a fixed prefix, so a leading "▁" becomes the space it stands for.
        text = self.tokenizer.decode(self.prefix_ids + [token_id], skip_special_tokens=False)
        cut = text.find(self.PREFIX)
        text = text[cut + len(self.PREFIX):] if cut != -1 else text
        return text.encode("utf-8")


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether the tokenizer is GPT-2 style byte-level (Llama 3, Qwen), read from its decoder's JSON state."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    if type(decoder).__name__ == "ByteLevel":
        return True
    try:
        state = json.loads(decoder.__getstate__())
    except Exception:
        return False
    text = json.dumps(state)
    return '"ByteLevel"' in text and '"ByteFallback"' not in text


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
