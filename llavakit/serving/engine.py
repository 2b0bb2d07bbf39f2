"""Continuous batching: one scheduler thread owns the model; requests join and leave the running batch
between decode steps, and each step is one batched forward over all active rows.

The KV cache is slotted: every row's keys/values are left-padded to the batch's common length, with a
per-row attention mask and per-row positions. A new request is prefilled alone, then merged in by padding.
"""

from __future__ import annotations

import collections
import dataclasses
import queue
import threading
from typing import Any, Callable

import torch
import torch.nn.functional as F

from llavakit.generation.logits import TopPLogitsWarper
from llavakit.generation.prefix_cache import FeatureCache
from llavakit.models.cache import DynamicCache
from llavakit.models.outputs import merged_features
from llavakit.serving.memory import kv_budget_tokens
from llavakit.serving.metrics import Metrics
from llavakit.serving.schemas import APIError, SamplingParams


@dataclasses.dataclass
class Event:
    """What the scheduler tells a request after each of its steps."""

    text: str = ""  # new text since the last event
    logprobs: list[dict] = dataclasses.field(default_factory=list)  # one dict per new token, when asked
    finish_reason: str | None = None  # "stop" or "length" on the last event
    error: APIError | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclasses.dataclass
class Prompt:
    """A request's model inputs: token ids (1, T) and, per image, its preprocessed pixels and bytes hash."""

    input_ids: torch.Tensor
    images: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {"digest", "pixel_values", ...}


class Sequence:
    """One request in flight: its prompt, sampling options, output so far and where events go."""

    def __init__(self, prompt: Prompt, params: SamplingParams, emit: Callable[[Event], None],
                 max_new_tokens: int) -> None:
        self.prompt, self.params, self.emit = prompt, params, emit
        self.max_new_tokens = max_new_tokens
        self.prompt_len = prompt.input_ids.shape[1]
        self.generated: list[int] = []
        self.sent = 0  # characters of text already emitted
        self.length = 0  # real tokens in this row's cache
        self.cancelled = threading.Event()
        self.done = False
        self.generator = torch.Generator()
        self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    def cancel(self) -> None:
        """Ask the scheduler to drop this request at its next step (the client went away)."""
        self.cancelled.set()


class Engine:
    """Owns the model in a scheduler thread; `submit` queues a request whose events go to its `emit`."""

    def __init__(self, model: Any, processor: Any, *, max_batch_size: int = 8, max_model_len: int | None = None,
                 kv_tokens: int | None = None, max_queue: int = 256, feature_cache_size: int = 64,
                 metrics: Metrics | None = None) -> None:
        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.max_batch_size = max_batch_size
        context = getattr(model.config.text_config, "max_position_embeddings", None) or 4096
        self.max_model_len = min(max_model_len or context, context)
        self.kv_tokens = kv_tokens if kv_tokens is not None else kv_budget_tokens(model)
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.features = FeatureCache(max_entries=feature_cache_size)  # image bytes' digest -> (tokens, H)
        self.waiting: queue.Queue[Sequence] = queue.Queue()
        self.pending: collections.deque[Sequence] = collections.deque()  # taken off the queue, not admitted yet
        self.rows: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L) 1 = real token, 0 = left padding
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llavakit-scheduler", daemon=True)

    # ---- the public side (any thread) -------------------------------------------------------------
    def start(self) -> "Engine":
        """Start the scheduler thread (once; later calls do nothing)."""
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.waiting.put(None)  # wake the loop
        self._thread.join(timeout=10)

    def submit(self, prompt: Prompt, params: SamplingParams, emit: Callable[[Event], None]) -> Sequence:
        """Queue a request; raises APIError when it can never fit or the queue is full."""
        n = prompt.input_ids.shape[1]
        room = self.max_model_len - n
        if room < 1:
            raise APIError(400, f"the prompt has {n} tokens, but the server's max model length is "
                           f"{self.max_model_len}", "messages", "context_length_exceeded")
        wanted = params.max_tokens if params.max_tokens is not None else room
        if wanted > room:
            raise APIError(400, f"prompt of {n} tokens + max_tokens {wanted} = {n + wanted} exceeds the max model "
                           f"length of {self.max_model_len}", "max_tokens", "context_length_exceeded")
        if n + wanted > self.kv_tokens:
            raise APIError(400, f"prompt of {n} tokens + {wanted} new tokens does not fit the KV cache budget of "
                           f"{self.kv_tokens} tokens", "max_tokens", "context_length_exceeded")
        if self.waiting.qsize() + len(self.pending) >= self.max_queue:
            raise APIError(429, f"the server already has {self.max_queue} requests waiting; retry later")
        seq = Sequence(prompt, params, emit, wanted)
        self.waiting.put(seq)
        self.metrics.set_gauge("waiting", self.waiting.qsize())
        return seq

    # ---- the scheduler thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        pending = self.pending
        while not self._stop.is_set():
            block = not self.rows and not pending
            try:  # take everything queued; sleep only when there is nothing to run
                while True:
                    item = self.waiting.get(block=block, timeout=0.5 if block else None)
                    block = False
                    if item is not None:
                        pending.append(item)
            except queue.Empty:
                pass
            while pending and len(self.rows) < self.max_batch_size and self._fits(pending[0]):
                self._admit(pending.popleft())
            self.metrics.set_gauge("waiting", len(pending) + self.waiting.qsize())
            self.metrics.set_gauge("running", len(self.rows))
            if self.rows:
                self._step()

    def _fits(self, seq: Sequence) -> bool:
        """The padded cache is B x longest row: admit while that stays within the token budget."""
        longest = max([s.prompt_len + s.max_new_tokens for s in self.rows + [seq]])
        return (len(self.rows) + 1) * longest <= self.kv_tokens

    @torch.no_grad()
    def _admit(self, seq: Sequence) -> None:
        """Prefill a request alone, emit its first token, and merge its cache into the batch."""
        if seq.cancelled.is_set():
            return
        try:
            cache = DynamicCache()
            n = seq.prompt_len
            inputs = self._prefill_inputs(seq.prompt)
            positions = torch.arange(n, device=self.model.device)[None]  # (1, T)
            out = self.model(**inputs, position_ids=positions, cache=cache, use_cache=True,
                             return_dict=True, logits_to_keep=1)
            logits = out.logits[:, -1].float()  # (1, V)
        except Exception as err:  # a bad request fails alone
            self._fail([seq], err)
            return
        self.metrics.inc("prompt_tokens_total", n)
        seq.length = n
        self._accept(seq, logits[0])
        if not seq.done:
            self._merge(seq, out.cache)

    def _prefill_inputs(self, prompt: Prompt) -> dict[str, Any]:
        """input_ids alone, or embeddings with each image's (cached) features written over its tokens."""
        device, ids = self.model.device, prompt.input_ids.to(self.model.device)
        if not prompt.images:
            return {"input_ids": ids}
        features = torch.cat([self._image_features(image) for image in prompt.images])  # (N_img_tokens, H)
        embeds = self.model.get_input_embeddings()(ids)  # (1, T, H)
        is_image = ids == self.model.config.image_token_index  # (1, T)
        if int(is_image.sum()) != features.shape[0]:
            raise APIError(400, f"the prompt has {int(is_image.sum())} image tokens but its images give "
                           f"{features.shape[0]} features", "messages")
        embeds = embeds.masked_scatter(is_image[..., None].to(device), features.to(device, embeds.dtype))
        return {"inputs_embeds": embeds}

    def _image_features(self, image: dict[str, Any]) -> torch.Tensor:
        """(tokens, H) features of one image, from the shared cache keyed by its bytes' hash."""
        key = image["digest"]
        cached = self.features.get(key)
        if cached is not None:
            self.metrics.inc("image_cache_hits_total")
            return cached
        pixels = image["pixel_values"].to(self.model.device, self.model.dtype)
        if image.get("image_sizes") is not None:  # LLaVA-NeXT: a list of packed (tokens_i, H)
            features = merged_features(self.model.get_image_features(pixels, image["image_sizes"]))
        else:
            features = merged_features(self.model.get_image_features(pixels))  # (P, H)
        self.features.put(key, features)
        return features

    def _merge(self, seq: Sequence, cache: DynamicCache) -> None:
        """Add a prefilled row to the batch, left-padding whichever side is shorter."""
        mask = torch.ones((1, seq.length), dtype=torch.long, device=self.model.device)  # (1, t)
        if not self.rows:
            self.rows, self.cache, self.mask = [seq], cache, mask
            return
        L, t = self.mask.shape[1], seq.length
        pad_batch, pad_row = max(t - L, 0), max(L - t, 0)
        for store, row in ((self.cache.key_cache, cache.key_cache), (self.cache.value_cache, cache.value_cache)):
            for i in range(len(store)):  # (B, KV, L, D) and (1, KV, t, D) -> (B + 1, KV, max(L, t), D)
                store[i] = torch.cat([F.pad(store[i], (0, 0, pad_batch, 0)), F.pad(row[i], (0, 0, pad_row, 0))])
        self.mask = torch.cat([F.pad(self.mask, (pad_batch, 0)), F.pad(mask, (pad_row, 0))])  # (B + 1, max(L, t))
        self.rows.append(seq)

    @torch.no_grad()
    def _step(self) -> None:
        """One batched decode step over all rows, then drop the rows that finished or were cancelled."""
        rows = self.rows
        device = self.model.device
        try:
            ids = torch.tensor([[s.generated[-1]] for s in rows], device=device)  # (B, 1)
            positions = torch.tensor([[s.length] for s in rows], device=device)  # (B, 1)
            self.mask = F.pad(self.mask, (0, 1), value=1)  # (B, L + 1)
            mask = None if bool(self.mask.all()) else self.mask
            out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask, cache=self.cache,
                             use_cache=True, return_dict=True, logits_to_keep=1)
            self.cache = out.cache
            logits = out.logits[:, -1].float()  # (B, V)
        except Exception as err:  # keep serving: fail this batch, start clean
            self._fail(rows, err)
            self.rows, self.cache, self.mask = [], None, None
            return
        for i, seq in enumerate(rows):
            seq.length += 1
            if not seq.cancelled.is_set():
                self._accept(seq, logits[i])
        keep = [i for i, s in enumerate(rows) if not s.done and not s.cancelled.is_set()]
        if len(keep) == len(rows):
            return
        self.metrics.inc("cancelled_total", sum(s.cancelled.is_set() and not s.done for s in rows))
        self.rows = [rows[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        index = torch.tensor(keep, device=device)
        self.cache.reorder_cache(index)
        self.mask = self.mask[index]
        start = int(self.mask.any(0).long().argmax())  # leading columns that are padding in every row
        if start:
            self._drop_front(start)
            self.mask = self.mask[:, start:]

    def _drop_front(self, n: int) -> None:
        """Forget the first n cache columns (padding in every row)."""
        self.cache.key_cache = [k[..., n:, :] for k in self.cache.key_cache]
        self.cache.value_cache = [v[..., n:, :] for v in self.cache.value_cache]

    # ---- per-token bookkeeping --------------------------------------------------------------------
    def _sample(self, seq: Sequence, logits: torch.Tensor) -> int:
        """Greedy at temperature 0, else temperature + top-p sampling with the request's own generator."""
        p = seq.params
        if p.temperature == 0:
            return int(logits.argmax())
        scores = logits / p.temperature  # (V,)
        if p.top_p < 1.0:
            scores = TopPLogitsWarper(p.top_p)(None, scores[None])[0]
        probs = torch.softmax(scores, dim=-1).cpu()
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _logprob(self, seq: Sequence, logits: torch.Tensor, token: int) -> dict:
        logprobs = torch.log_softmax(logits, dim=-1)  # (V,)
        top = torch.topk(logprobs, seq.params.top_logprobs) if seq.params.top_logprobs else None
        alternatives = [] if top is None else [(self.tokenizer.decode([int(i)]), float(v))
                                               for v, i in zip(top.values, top.indices)]
        return {"token": self.tokenizer.decode([token]), "logprob": float(logprobs[token]), "top": alternatives}

    def _accept(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Pick the next token, apply the stop rules and emit the text that is safe to show."""
        token = self._sample(seq, logits)
        seq.generated.append(token)
        self.metrics.inc("generation_tokens_total")
        finish = None
        if token in self.eos:
            finish = "stop"
        elif len(seq.generated) >= seq.max_new_tokens:
            finish = "length"
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        for stop in seq.params.stop:
            at = text.find(stop)
            if at != -1:
                text, finish = text[:at], "stop"
        if finish is None:  # hold back a half-decoded character or a possible start of a stop string
            hold = max([len(s) - 1 for s in seq.params.stop], default=0)
            safe = len(text.rstrip("\ufffd")) - hold
            text = text[:max(safe, seq.sent)]
        event = Event(text=text[seq.sent:], finish_reason=finish, prompt_tokens=seq.prompt_len,
                      completion_tokens=len(seq.generated))
        if seq.params.logprobs:
            event.logprobs = [self._logprob(seq, logits, token)]
        seq.sent = len(text)
        seq.done = finish is not None
        self._emit(seq, event)

    def _fail(self, seqs: list[Sequence], err: Exception) -> None:
        error = err if isinstance(err, APIError) else APIError(500, f"generation failed: {type(err).__name__}: {err}")
        self.metrics.inc("request_failures_total", len(seqs))
        for seq in seqs:
            seq.done = True
            self._emit(seq, Event(error=error, prompt_tokens=seq.prompt_len))

    @staticmethod
    def _emit(seq: Sequence, event: Event) -> None:
        try:
            seq.emit(event)
        except Exception:  # a consumer that went away must not stop the scheduler
            seq.cancel()
