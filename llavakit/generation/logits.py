"""Logits processors: turn the next-token logits into the scores `generate` picks from.

Each is a callable `(input_ids (B, T), scores (B, V)) -> scores (B, V)`, the transformers protocol, so
transformers' own processors can be passed to our `generate` too. The math matches transformers' processors
of the same name bit for bit, which keeps seeded sampling identical.
"""

from __future__ import annotations

import math

import torch


class LogitsProcessorList(list):
    """Processors applied in order."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


def _eos_tensor(eos_token_id: int | list[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(eos_token_id, torch.Tensor):
        return eos_token_id.reshape(-1)
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def _ban(scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Scores with the given vocabulary ids set to -inf (a new tensor)."""
    banned = torch.isin(torch.arange(scores.shape[-1], device=scores.device), token_ids.to(scores.device))  # (V,)
    return torch.where(banned, -math.inf, scores)  # (B, V)


class MinLengthLogitsProcessor:
    """Forbid EOS while the whole sequence (prompt included) is shorter than `min_length`."""

    def __init__(self, min_length: int, eos_token_id: int | list[int] | torch.Tensor) -> None:
        if not isinstance(min_length, int) or min_length < 0:
            raise ValueError(f"min_length must be an integer >= 0, got {min_length!r}")
        self.min_length = min_length
        self.eos_token_id = _eos_tensor(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] < self.min_length:
            return _ban(scores, self.eos_token_id)
        return scores.clone()


class MinNewTokensLengthLogitsProcessor:
    """Forbid EOS until `min_new_tokens` tokens were generated after a prompt of `prompt_length_to_skip`."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int,
                 eos_token_id: int | list[int] | torch.Tensor) -> None:
        for name, value in (("prompt_length_to_skip", prompt_length_to_skip), ("min_new_tokens", min_new_tokens)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = _eos_tensor(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] - self.prompt_length_to_skip < self.min_new_tokens:
            return _ban(scores, self.eos_token_id)
        return scores.clone()


class RepetitionPenaltyLogitsProcessor:
    """Make every token already in the sequence less likely (CTRL paper): logit/penalty if > 0, else *penalty.

    `prompt_ignore_length` (int, or a (B,) tensor per row) skips that many leading positions: `generate`
    passes the left-padding length of each row, so pad tokens are not penalised.
    """

    def __init__(self, penalty: float, prompt_ignore_length: int | torch.Tensor | None = None) -> None:
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"repetition penalty must be a number > 0, got {penalty!r}")
        if isinstance(prompt_ignore_length, int) and prompt_ignore_length < 0:
            raise ValueError(f"prompt_ignore_length must be >= 0, got {prompt_ignore_length}")
        if isinstance(prompt_ignore_length, torch.Tensor) and prompt_ignore_length.dim() != 1:
            raise ValueError(f"prompt_ignore_length must be 1-D (one length per row), "
                             f"got shape {tuple(prompt_ignore_length.shape)}")
        self.penalty = float(penalty)
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            input_ids = input_ids[:, ignore:]
        elif isinstance(ignore, torch.Tensor):
            if ignore.shape[0] != input_ids.shape[0]:
                raise ValueError(f"prompt_ignore_length has {ignore.shape[0]} rows but the batch has "
                                 f"{input_ids.shape[0]}")
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
            skipped = positions[None, :] < ignore.to(input_ids.device)[:, None]  # (B, T)
            input_ids = input_ids.masked_fill(skipped, V)  # skipped slots point at a spare column
        # Ids >= V (and the skipped slots) land in one spare column that is dropped at the end.
        ids = input_ids.clamp(max=V)  # (B, T)
        padded = torch.nn.functional.pad(scores, (0, 1))  # (B, V+1)
        seen = padded.gather(1, ids)  # (B, T)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return padded.scatter(1, ids, seen)[..., :V]  # (B, V)


class TemperatureLogitsWarper:
    """Divide the logits by `temperature` (< 1 sharpens, > 1 flattens)."""

    def __init__(self, temperature: float) -> None:
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            hint = " For greedy decoding set do_sample=False." if temperature == 0 else ""
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}.{hint}")
        self.temperature = float(temperature)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.temperature


class TopKLogitsWarper:
    """Keep the `top_k` highest logits (ties with the k-th included); set the rest to `filter_value`."""

    def __init__(self, top_k: int, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        k = min(self.top_k, scores.shape[-1])
        kth_best = torch.topk(scores, k)[0][..., -1:]  # (B, 1)
        return scores.masked_fill(scores < kth_best, self.filter_value)


class TopPLogitsWarper:
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability mass reaches `top_p`."""

    def __init__(self, top_p: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        top_p = float(top_p)
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
            raise ValueError(f"min_tokens_to_keep must be a positive integer, got {min_tokens_to_keep!r}")
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ascending, order = torch.sort(scores, descending=False)  # (B, V) each
        mass_below = ascending.softmax(dim=-1).cumsum(dim=-1)  # (B, V) probability mass up to each token
        # Drop the unlikely tail whose total mass stays within 1 - top_p; always keep the best few.
        drop_sorted = mass_below <= (1 - self.top_p)
        drop_sorted[..., -self.min_tokens_to_keep:] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
        return scores.masked_fill(drop, self.filter_value)
