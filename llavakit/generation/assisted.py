"""Assisted (speculative) greedy decoding: a cheap drafter proposes several tokens, one forward of the model
checks them all, and every proposal up to the first disagreement is kept. The output is exactly greedy
decoding's; only the number of model forwards changes.

Drafters: prompt lookup (`prompt_lookup_num_tokens`: copy what followed the latest n-gram's previous
occurrence, good for answers that quote the prompt) and an assistant model sharing the tokenizer
(`assistant_model`: e.g. llava-interleave-qwen-0.5b drafting for -7b). Unlike transformers, image prompts
work: drafts never contain image placeholder tokens, and the assistant sees the images in its own prefill.
"""

from __future__ import annotations

from typing import Any

import torch

from llavakit.generation.config import GenerationConfig
from llavakit.generation.logits import LogitsProcessorList
from llavakit.generation.stopping import StoppingCriteriaList


def truncate(cache, length: int) -> None:
    """Keep the first `length` positions of `cache` (crop takes how many to drop, as a negative number)."""
    cache.crop(length - cache.get_seq_length())


class PromptLookupDrafter:
    """Drafts the tokens that followed the most recent earlier match of the sequence's last n-gram."""

    def __init__(self, num_tokens: int, max_ngram: int = 2, banned: int | None = None) -> None:
        self.num_tokens, self.max_ngram, self.banned = num_tokens, max_ngram, banned

    def __call__(self, input_ids: torch.LongTensor, limit: int) -> list[int]:
        ids = input_ids[0]  # (T,)
        T = ids.shape[0]
        for n in range(min(self.max_ngram, T - 1), 0, -1):
            windows = ids.unfold(0, n, 1)  # (T-n+1, n)
            starts = (windows == ids[-n:]).all(dim=1).nonzero().flatten().tolist()
            for start in starts:  # the earliest occurrence first, as transformers does
                begin = start + n
                end = min(begin + self.num_tokens, T, begin + limit)
                if begin < end:
                    return _until_banned(ids[begin:end].tolist(), self.banned)
        return []

    def update(self, accepted: int, drafted: int) -> None:
        pass


class AssistantDrafter:
    """Drafts greedily with a smaller model that keeps its own KV cache of the sequence."""

    def __init__(self, assistant: Any, prompt: Any, model_kwargs: dict[str, Any], num_tokens: int,
                 schedule: str, banned: int | None) -> None:
        from llavakit.models.cache import DynamicCache

        self.model, self.num_tokens, self.schedule, self.banned = assistant, float(num_tokens), schedule, banned
        extra = {k: v for k, v in model_kwargs.items() if k != "cache"}
        _, self.cache, _, _ = assistant._prefill_rows(prompt, extra, 1, {})  # prompt and images, once
        self.tokens = prompt.input_ids[0].tolist()  # what self.cache holds
        self.first_position = int(prompt.position_ids[0, 0]) if prompt.position_ids.shape[1] else 0
        self.mask = prompt.attention_mask  # (1, T)
        assert isinstance(self.cache, DynamicCache) or hasattr(self.cache, "crop")

    def __call__(self, input_ids: torch.LongTensor, limit: int) -> list[int]:
        ids = input_ids[0].tolist()
        common = 0
        while common < min(len(self.tokens), len(ids) - 1) and self.tokens[common] == ids[common]:
            common += 1
        truncate(self.cache, common)
        self.tokens = ids[:common]
        feed, draft = ids[common:], []
        device = self.model.device
        for _ in range(min(int(self.num_tokens), limit)):
            start = len(self.tokens)
            positions = torch.arange(start, start + len(feed)) - (self.mask.shape[1] - int(self.mask.sum()))
            mask = torch.cat([self.mask, self.mask.new_ones((1, start + len(feed) - self.mask.shape[1]))], dim=1)
            out = self.model(input_ids=torch.tensor([feed], device=device), position_ids=positions[None].to(device),
                             attention_mask=None if bool((mask == 1).all()) else mask.to(device), cache=self.cache,
                             use_cache=True, return_dict=True)
            self.cache, self.tokens = out.cache, self.tokens + feed
            token = int(out.logits[0, -1].argmax())
            if token == self.banned:
                break
            draft.append(token)
            feed = [token]
        return draft

    def update(self, accepted: int, drafted: int) -> None:
        """transformers' "heuristic" schedule: draft 2 more after a fully accepted draft, 1 fewer otherwise."""
        if self.schedule in ("heuristic", "heuristic_transient") and drafted:
            self.num_tokens = self.num_tokens + 2 if accepted == drafted else max(1.0, self.num_tokens - 1)


def _until_banned(tokens: list[int], banned: int | None) -> list[int]:
    """The draft up to (not including) the first image placeholder: those must never be fed as text."""
    return tokens[:tokens.index(banned)] if banned is not None and banned in tokens else tokens


@torch.no_grad()
def assisted_decoding(model: Any, assistant: Any, prompt: Any, model_kwargs: dict[str, Any],
                      config: GenerationConfig, processors: LogitsProcessorList, criteria: StoppingCriteriaList,
                      eos: list[int] | None, pad: int | None, max_length: int, streamer: Any = None) -> Any:
    """Greedy decoding of one prompt, checking drafted tokens several at a time; returns what greedy returns."""
    from llavakit.generation.utils import GenerateDecoderOnlyOutput, _to

    if prompt.input_ids.shape[0] != 1:
        raise ValueError(f"assisted decoding (prompt_lookup_num_tokens / assistant_model) supports one prompt at "
                         f"a time, got a batch of {prompt.input_ids.shape[0]}")
    if prompt.input_ids.shape[1] == 0:
        raise ValueError("assisted decoding needs input_ids (an inputs_embeds-only prompt cannot be drafted from)")
    if config.return_dict_in_generate and (config.output_attentions or config.output_hidden_states):
        raise ValueError("assisted decoding does not return attentions / hidden states")
    banned = getattr(model.config, "image_token_index", None)
    if assistant is not None:
        drafter = AssistantDrafter(assistant, prompt, model_kwargs, config.num_assistant_tokens,
                                   config.num_assistant_tokens_schedule, banned)
    else:
        drafter = PromptLookupDrafter(config.prompt_lookup_num_tokens, config.max_matching_ngram_size or 2, banned)
    device = model.device
    want_scores = config.return_dict_in_generate and config.output_scores
    want_logits = config.return_dict_in_generate and config.output_logits
    scores, raw_logits = [], []
    logits, cache, _, _ = model._prefill_rows(prompt, model_kwargs, 1, {})  # (1, V)
    input_ids, mask = prompt.input_ids, prompt.attention_mask
    pads = mask.shape[1] - int(mask.sum())  # left padding of the one row

    def choose(logits: torch.Tensor) -> int:
        """Greedy pick for the next position (processors see the sequence so far), recording scores."""
        step_scores = processors(input_ids, logits)
        if want_scores:
            scores.append(step_scores)
        if want_logits:
            raw_logits.append(logits)
        return int(step_scores.argmax(dim=-1))

    def append(token: int) -> bool:
        """Add a token; True when generation is done."""
        nonlocal input_ids
        input_ids = torch.cat([input_ids, input_ids.new_tensor([[token]])], dim=-1)
        if streamer is not None:
            streamer.put(input_ids[:, -1].cpu())
        return bool(criteria(input_ids, tuple(scores) if want_scores else None).all())

    if streamer is not None:
        streamer.put(input_ids.cpu())
    try:
        while True:
            if append(choose(logits)):
                break
            T = input_ids.shape[1]
            draft = drafter(input_ids, max(0, max_length - T - 1))  # the model adds one token of its own
            feed = [int(input_ids[0, -1])] + draft
            full_mask = torch.cat([mask, mask.new_ones((1, T + len(draft) - mask.shape[1]))], dim=1)
            positions = torch.arange(T - 1, T + len(draft)) - pads  # (1 + k,)
            out = model(input_ids=torch.tensor([feed], device=device), position_ids=positions[None].to(device),
                        attention_mask=None if bool((full_mask == 1).all()) else _to(full_mask, device),
                        cache=cache, use_cache=True, return_dict=True)
            cache = out.cache
            step_logits = out.logits[0].to(dtype=torch.float32, device=input_ids.device)  # (1 + k, V)
            del out
            accepted, done = 0, False
            for i, token in enumerate(draft):
                if choose(step_logits[i:i + 1]) != token:
                    scores[-1:] = []  # re-recorded by the next `choose` on the same logits
                    raw_logits[-1:] = []
                    break
                accepted += 1
                if append(token):
                    done = True
                    break
            drafter.update(accepted, len(draft))
            if done:
                break
            logits = step_logits[accepted:accepted + 1]  # (1, V) after the accepted drafts
            truncate(cache, input_ids.shape[1])  # forget the rejected drafts
    finally:
        if streamer is not None:
            streamer.end()
    if not config.return_dict_in_generate:
        return input_ids
    return GenerateDecoderOnlyOutput(sequences=input_ids, scores=tuple(scores) if want_scores else None,
                                     logits=tuple(raw_logits) if want_logits else None, cache=cache)
