"""Streamers: receive token ids from `generate` as they are produced and turn them into text, word by word.

Protocol (transformers'): `generate` calls `put(prompt_ids)` once, `put(new_ids)` after every step and
`end()` at the end. Chunking follows transformers 5.24+: text made of letters (with their marks), digits and
spaces is released at once; text holding a symbol waits for the next space (it may start some formatting or be
an incomplete character); a newline or a CJK character releases everything. After a newline the line's last
token stays as decode context, so the next line's leading spaces survive.
"""

from __future__ import annotations

import unicodedata
from queue import Queue
from typing import Any

import torch


class BaseStreamer:
    """What `generate` needs from a streamer."""

    def put(self, value: torch.Tensor) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


class TextStreamer(BaseStreamer):
    """Print the text to stdout as soon as whole words are formed (batch size 1 only)."""

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []  # ids since the last newline (plus the newline's own token)
        self.print_len = 0  # characters of their text already released
        self.next_tokens_are_prompt = True

    def put(self, value: torch.Tensor) -> None:
        """Take new ids ((1, T) or (T,)), release the text that is final."""
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError(f"{type(self).__name__} supports batch size 1 only, got {value.shape[0]} rows")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        pending = text[self.print_len:]
        if text.endswith("\n"):
            # A finished line: release it; keep its last token as context, so that the tokenizer does not
            # strip the next line's leading space (decoding a fresh sequence drops one).
            ready = pending
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        elif text and _is_cjk(ord(text[-1])):
            # CJK text has no spaces between words; each character is final.
            ready = pending
            self.print_len += len(ready)
        elif all(char.isspace() or unicodedata.category(char)[0] in "LMN" for char in pending):
            # Letters, marks, digits and spaces cannot change with the next token's text: release them.
            ready = pending
            self.print_len += len(ready)
        else:
            # A symbol may be an incomplete character or the start of some markup: release up to the last space.
            ready = text[self.print_len:text.rfind(" ") + 1]
            self.print_len += len(ready)
        self.on_finalized_text(ready)

    def end(self) -> None:
        """Release whatever is left, then signal the end."""
        ready = ""
        if self.token_cache:
            ready = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)[self.print_len:]
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(ready, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Print the text; a newline after the last piece."""
        print(text, flush=True, end=None if stream_end else "")


class TextIteratorStreamer(TextStreamer):
    """Iterate over text pieces while `generate` runs in another thread.

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)
        Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer, max_new_tokens=50)).start()
        for piece in streamer:
            print(piece, end="")

    `timeout` (seconds) bounds each wait for the next piece; queue.Empty is raised when it runs out.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None,
                 **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


def _is_cjk(codepoint: int) -> bool:
    """Whether a code point is in a CJK Unified Ideographs block (where words are not space-separated)."""
    return any(lo <= codepoint <= hi for lo, hi in _CJK_RANGES)


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
