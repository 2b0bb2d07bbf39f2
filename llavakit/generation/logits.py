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


# ---- more sampling warpers (applied after temperature/top-k/top-p, in transformers' order) --------------------
class MinPLogitsWarper:
    """Keep tokens whose probability is at least `min_p` times the most likely token's."""

    def __init__(self, min_p: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        if isinstance(min_p, bool) or not isinstance(min_p, (int, float)) or not 0 <= min_p <= 1:
            raise ValueError(f"min_p must be a number in [0, 1], got {min_p!r}")
        _check_keep(min_tokens_to_keep)
        self.min_p, self.filter_value, self.min_tokens_to_keep = float(min_p), filter_value, min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.softmax(dim=-1)  # (B, V)
        drop = probs < self.min_p * probs.amax(dim=-1, keepdim=True)  # (B, V)
        best = probs.topk(min(self.min_tokens_to_keep, probs.shape[-1]), dim=-1).indices  # (B, k)
        drop.scatter_(-1, best, False)
        return scores.masked_fill(drop, self.filter_value)


class TypicalLogitsWarper:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to mass `typical_p`."""

    def __init__(self, mass: float = 0.9, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        if isinstance(mass, bool) or not isinstance(mass, (int, float)) or not 0 < mass < 1:
            raise ValueError(f"typical_p must be a number in (0, 1), got {mass!r}")
        _check_keep(min_tokens_to_keep)
        self.mass, self.filter_value, self.min_tokens_to_keep = float(mass), filter_value, min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        logp = scores.log_softmax(dim=-1)  # (B, V)
        entropy = -(logp * logp.exp()).nansum(-1, keepdim=True)  # (B, 1)
        distance = (-logp - entropy).abs()  # (B, V) how far each token's surprise is from the entropy
        sorted_distance, order = torch.sort(distance, descending=False)  # (B, V) each
        mass = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        last = (mass < self.mass).sum(dim=1).clamp_(max=sorted_distance.shape[-1] - 1)  # (B,)
        drop_sorted = sorted_distance > sorted_distance.gather(1, last[:, None])  # (B, V)
        drop_sorted[..., :self.min_tokens_to_keep] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


class EpsilonLogitsWarper:
    """Truncation sampling: drop tokens with probability below `epsilon`."""

    def __init__(self, epsilon: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise ValueError(f"epsilon_cutoff must be a number in (0, 1), got {epsilon!r}")
        _check_keep(min_tokens_to_keep)
        self.epsilon, self.filter_value, self.min_tokens_to_keep = float(epsilon), filter_value, min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return _cut_below(scores, scores.softmax(dim=-1) < self.epsilon, self.min_tokens_to_keep, self.filter_value)


class EtaLogitsWarper:
    """Eta sampling: drop tokens below min(eta, sqrt(eta) * exp(-entropy)), an entropy-aware epsilon."""

    def __init__(self, epsilon: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise ValueError(f"eta_cutoff must be a number in (0, 1), got {epsilon!r}")
        _check_keep(min_tokens_to_keep)
        self.epsilon, self.filter_value, self.min_tokens_to_keep = float(epsilon), filter_value, min_tokens_to_keep

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        eps = torch.tensor(self.epsilon, device=scores.device)
        entropy = torch.distributions.Categorical(logits=scores).entropy()  # (B,)
        eta = torch.min(eps, eps.sqrt() * torch.exp(-entropy))[..., None]  # (B, 1)
        return _cut_below(scores, scores.softmax(dim=-1) < eta, self.min_tokens_to_keep, self.filter_value)


class TopHLogitsWarper:
    """Top-H: among the 100 best tokens keep the most likely ones whose entropy terms sum to <= top_h * entropy."""

    def __init__(self, top_h: float, filter_value: float = -math.inf) -> None:
        if isinstance(top_h, bool) or not isinstance(top_h, (int, float)) or not 0 < top_h <= 1:
            raise ValueError(f"top_h must be a number in (0, 1], got {top_h!r}")
        self.top_h, self.filter_value, self.top_n = float(top_h), filter_value, 100

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        best, index = scores.topk(min(self.top_n, scores.shape[-1]), dim=-1)  # (B, n) sorted
        dist = torch.distributions.Categorical(logits=best)
        probs = dist.probs  # (B, n)
        budget = (dist.entropy() * self.top_h)[:, None]  # (B, 1)
        keep_sorted = torch.cumsum(-probs * torch.log(probs), dim=-1) <= budget  # (B, n)
        keep_sorted[:, 0] = True
        keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, index, keep_sorted)  # (B, V)
        return scores.masked_fill(~keep, self.filter_value)


def _check_keep(min_tokens_to_keep: int) -> None:
    if isinstance(min_tokens_to_keep, bool) or not isinstance(min_tokens_to_keep, int) or min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be a positive integer, got {min_tokens_to_keep!r}")


def _cut_below(scores: torch.Tensor, low: torch.Tensor, keep: int, filter_value: float) -> torch.Tensor:
    """Drop the `low` tokens except the `keep` best ones."""
    kth_best = scores.topk(min(keep, scores.shape[-1]))[0][..., -1, None]  # (B, 1)
    return scores.masked_fill(low & (scores < kth_best), filter_value)


# ---- token constraints ---------------------------------------------------------------------------------------
class NoRepeatNGramLogitsProcessor:
    """Forbid the token that would repeat an n-gram of size `ngram_size` already in the sequence."""

    def __init__(self, ngram_size: int) -> None:
        if isinstance(ngram_size, bool) or not isinstance(ngram_size, int) or ngram_size <= 0:
            raise ValueError(f"no_repeat_ngram_size must be a positive integer, got {ngram_size!r}")
        self.ngram_size = ngram_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        n, T, V = self.ngram_size, input_ids.shape[-1], scores.shape[-1]
        if T < n:
            return scores
        tail = input_ids[:, T + 1 - n:]  # (B, n-1) the last n-1 tokens
        windows = input_ids.unfold(1, n, 1)  # (B, T-n+1, n) every n-gram
        repeats = (windows[..., :-1] == tail[:, None]).all(dim=-1)  # (B, T-n+1) n-grams starting like the tail
        banned = scores.new_zeros((scores.shape[0], V + 1), dtype=torch.bool)  # spare column for non-matches
        banned.scatter_(1, torch.where(repeats, windows[..., -1].clamp(max=V), V), True)
        return scores.masked_fill(banned[:, :V], -math.inf)


class SequenceBiasLogitsProcessor:
    """Add a bias to a token when the tokens before it match a given sequence's prefix.

    `sequence_bias`: {(ids...): bias} or [[[ids...], bias], ...]; a one-token sequence biases that token always.
    """

    def __init__(self, sequence_bias: dict | list) -> None:
        self.sequence_bias = _sequence_bias_dict(sequence_bias)
        self._prepared: tuple | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        single, groups = self._prepare(scores)
        bias = torch.zeros_like(scores) + single  # (B, V)
        for prefixes, last_tokens, values in groups:  # prefixes (S, L), last_tokens (S,), values (S,)
            L = prefixes.shape[1]
            if L > input_ids.shape[1]:
                continue
            matching = (input_ids[:, None, -L:] == prefixes).all(dim=-1)  # (B, S)
            bias.index_add_(1, last_tokens, torch.where(matching, values, 0.0).to(bias.dtype))
        return scores + bias

    def _prepare(self, scores: torch.Tensor) -> tuple:
        if self._prepared is None:
            V, device = scores.shape[-1], scores.device
            too_big = [i for ids in self.sequence_bias for i in ids if i >= V]
            if too_big:
                raise ValueError(f"the vocabulary has {V} tokens, but sequence_bias/bad_words_ids name {too_big}")
            single = torch.zeros(V, dtype=torch.float, device=device)  # (V,)
            ones = [(ids[0], b) for ids, b in self.sequence_bias.items() if len(ids) == 1]
            if ones:
                single[[i for i, _ in ones]] = torch.tensor([b for _, b in ones], device=device)
            by_length: dict[int, list] = {}
            for ids, b in self.sequence_bias.items():
                if len(ids) > 1:
                    by_length.setdefault(len(ids) - 1, []).append((ids, b))
            groups = [(torch.tensor([ids[:-1] for ids, _ in g], device=device),
                       torch.tensor([ids[-1] for ids, _ in g], device=device),
                       torch.tensor([b for _, b in g], dtype=torch.float, device=device)) for g in by_length.values()]
            self._prepared = (single, groups)
        return self._prepared


def _sequence_bias_dict(sequence_bias: dict | list) -> dict[tuple[int, ...], float]:
    """Validate sequence_bias and return it as {tuple of ids: float bias}."""
    def valid_ids(ids: object) -> bool:
        return (isinstance(ids, (list, tuple)) and len(ids) > 0
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids))

    if isinstance(sequence_bias, list) and sequence_bias:
        if not all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], list) and valid_ids(p[0])
                   and isinstance(p[1], float) for p in sequence_bias):
            raise ValueError(f"sequence_bias as a list must hold [[token ids], float bias] pairs, got {sequence_bias!r}")
        return {tuple(ids): bias for ids, bias in sequence_bias}
    if isinstance(sequence_bias, dict) and sequence_bias:
        if not all(isinstance(k, tuple) and valid_ids(k) and isinstance(v, float) for k, v in sequence_bias.items()):
            raise ValueError(f"sequence_bias must map tuples of token ids (>= 0) to float biases, got {sequence_bias!r}")
        return dict(sequence_bias)
    raise ValueError(f"sequence_bias must be a non-empty dict or list, got {sequence_bias!r}")


class NoBadWordsLogitsProcessor(SequenceBiasLogitsProcessor):
    """Never complete one of the `bad_words_ids` sequences (its last token gets -inf after its prefix).

    A single-token bad word equal to an EOS id is ignored, so generation can still end.
    """

    def __init__(self, bad_words_ids: list[list[int]],
                 eos_token_id: int | list[int] | torch.Tensor | None = None) -> None:
        if (not isinstance(bad_words_ids, list) or not bad_words_ids
                or not all(isinstance(w, list) and w and all(isinstance(i, int) and not isinstance(i, bool)
                                                               and i >= 0 for i in w) for w in bad_words_ids)):
            raise ValueError(f"bad_words_ids must be a non-empty list of lists of token ids (>= 0), "
                             f"got {bad_words_ids!r}")
        eos = _eos_tensor(eos_token_id).tolist() if eos_token_id is not None else []
        kept = [w for w in bad_words_ids if not (len(w) == 1 and w[0] in eos)]
        self.sequence_bias = {tuple(w): -math.inf for w in kept}  # may be empty: nothing to forbid
        self._prepared = None


class SuppressTokensLogitsProcessor:
    """Never generate the `suppress_tokens` ids."""

    def __init__(self, suppress_tokens: list[int]) -> None:
        self.suppress_tokens = torch.tensor(_token_list("suppress_tokens", suppress_tokens), dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return _ban(scores, self.suppress_tokens)


class SuppressTokensAtBeginLogitsProcessor:
    """Forbid the `begin_suppress_tokens` ids as the first generated token (when the sequence has `begin_index`)."""

    def __init__(self, begin_suppress_tokens: list[int], begin_index: int) -> None:
        self.begin_suppress_tokens = torch.tensor(_token_list("begin_suppress_tokens", begin_suppress_tokens),
                                                  dtype=torch.long)
        self.begin_index = begin_index

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] == self.begin_index:
            return _ban(scores, self.begin_suppress_tokens)
        return scores


def _token_list(name: str, ids: object) -> list[int]:
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"{name} must be a list of token ids, got {ids!r}")
    return list(ids)


class ForcedBOSTokenLogitsProcessor:
    """Force `bos_token_id` as the token after a one-token sequence."""

    def __init__(self, bos_token_id: int) -> None:
        self.bos_token_id = bos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != 1:
            return scores
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.bos_token_id] = 0
        return forced


class ForcedEOSTokenLogitsProcessor:
    """Force an EOS id as the last token, the one that makes the sequence `max_length` long."""

    def __init__(self, max_length: int, eos_token_id: int | list[int] | torch.Tensor) -> None:
        self.max_length = max_length
        self.eos_token_id = _eos_tensor(eos_token_id)
        if torch.is_floating_point(self.eos_token_id) or bool((self.eos_token_id < 0).any()):
            raise ValueError(f"forced_eos_token_id must be token ids >= 0, got {eos_token_id!r}")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] != self.max_length - 1:
            return scores
        forced = torch.full_like(scores, -math.inf)
        forced[:, self.eos_token_id.to(scores.device)] = 0
        return forced


class ExponentialDecayLengthPenalty:
    """After `start` new tokens, raise EOS scores by |score| * (factor ** (steps past start) - 1)."""

    def __init__(self, exponential_decay_length_penalty: tuple[int, float],
                 eos_token_id: int | list[int] | torch.Tensor, input_ids_seq_length: int) -> None:
        value = exponential_decay_length_penalty
        if (not isinstance(value, (list, tuple)) or len(value) != 2 or not isinstance(value[0], int)
                or isinstance(value[1], bool) or not isinstance(value[1], (int, float))):
            raise ValueError(f"exponential_decay_length_penalty must be (start_index: int, decay_factor: float), "
                             f"got {value!r}")
        self.regulation_start = value[0] + input_ids_seq_length
        self.regulation_factor = float(value[1])
        self.eos_token_id = _eos_tensor(eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[-1]
        if T <= self.regulation_start:
            return scores
        eos = self.eos_token_id.to(scores.device)
        eos_scores = scores[:, eos]  # (B, n_eos)
        penalty = eos_scores.abs() * (pow(self.regulation_factor, T - self.regulation_start) - 1)
        penalties = torch.zeros_like(scores)
        penalties[:, eos] = penalty.masked_fill(~torch.isfinite(eos_scores), 0.0)
        return scores + penalties


class EncoderRepetitionPenaltyLogitsProcessor:
    """Make the prompt's tokens MORE likely (a penalty > 1 divides by 1/penalty): keeps answers close to the input."""

    def __init__(self, penalty: float, encoder_input_ids: torch.LongTensor) -> None:
        if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not penalty > 0:
            raise ValueError(f"encoder_repetition_penalty must be a number > 0, got {penalty!r}")
        self.penalty = 1 / float(penalty)
        self.encoder_input_ids = encoder_input_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        ids = self.encoder_input_ids.to(scores.device)  # (B_prompt, T)
        if scores.shape[0] > ids.shape[0]:  # beams / returned sequences: each prompt row repeated
            ids = ids.repeat_interleave(scores.shape[0] // ids.shape[0], dim=0)
        seen = scores.gather(1, ids)  # (B, T)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, ids, seen)


class LogitNormalization:
    """Log-softmax the final scores (renormalize_logits=True): other processors may have unnormalized them."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.log_softmax(dim=-1)
