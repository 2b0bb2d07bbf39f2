"""Beam search and beam sampling (`num_beams` > 1), with transformers' algorithm step for step.

Per prompt, `num_beams` running hypotheses are extended each step: every (beam, token) pair is scored by
the beam's summed log-probability plus the token's processed log-probability, and the best 2 * num_beams
(more with several EOS ids) candidates are kept (beam sampling draws them without replacement instead).
Candidates that hit a stopping criterion go to the finished pool, scored by sum / new_length ** length_penalty;
the best unfinished ones keep running. `early_stopping` decides when the finished pool can no longer improve.
The prompt (and images) are run once per prompt; the KV cache is then repeated per beam and reordered by
the beams chosen each step.
"""

from __future__ import annotations

from typing import Any

import torch

from llavakit.generation.config import GenerationConfig
from llavakit.generation.logits import LogitsProcessorList
from llavakit.generation.stopping import StoppingCriteriaList

NEG = -1.0e9  # the score of "not a candidate"


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, K, ...) -> the beams `index` (B, K') selects, (B, K', ...)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """(B, K, ...) -> (B*K, ...)."""
    return tensor.reshape(tensor.shape[0] * tensor.shape[1], *tensor.shape[2:])


@torch.no_grad()
def beam_search(model: Any, prompt: Any, model_kwargs: dict[str, Any], config: GenerationConfig,
                processors: LogitsProcessorList, criteria: StoppingCriteriaList, eos: list[int] | None,
                pad: int | None, max_length: int) -> Any:
    """Decode with beam search; returns (B*num_return_sequences, T') sequences or a GenerateBeamDecoderOnlyOutput."""
    from llavakit.generation.utils import GenerateBeamDecoderOnlyOutput, _to

    if not config.use_cache and prompt.inputs_embeds is None:
        raise ValueError("beam search in llavakit needs the KV cache: do not set use_cache=False")
    n_beams, n_return = config.num_beams, config.num_return_sequences
    B, T = prompt.input_ids.shape
    ids_device, device = prompt.input_ids.device, model.device
    keep = max(2, 1 + len(eos or [])) * n_beams  # candidates kept per prompt and step
    top_beams = torch.arange(keep, device=ids_device) < n_beams  # (K,) the candidates that may finish
    early_stopping, length_penalty = config.early_stopping, config.length_penalty
    dict_out = config.return_dict_in_generate
    want = {name: dict_out and getattr(config, name)
            for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")}
    extra = {k: True for k in ("output_attentions", "output_hidden_states") if want[k]}
    all_scores, raw_logits, attentions, hiddens = [], [], [], []

    fill = ((pad if pad else eos[0]) if eos is not None else -1)  # transformers' filler for unused slots
    running = torch.full((B, n_beams, max_length), fill, dtype=torch.long, device=ids_device)  # (B, nb, L)
    running[:, :, :T] = prompt.input_ids[:, None]
    finished_seqs = running.clone()
    running_scores = torch.zeros((B, n_beams), device=ids_device)  # (B, nb) summed log-probs
    running_scores[:, 1:] = NEG  # only the first beam starts, so the beams do not all pick the same token
    finished_scores = torch.full((B, n_beams), NEG, device=ids_device)  # (B, nb) length-normalised
    is_finished = torch.zeros((B, n_beams), dtype=torch.bool, device=ids_device)
    improvable = torch.ones((B, 1), dtype=torch.bool, device=ids_device)  # can running beams still beat the pool
    hits = torch.zeros((B, n_beams), dtype=torch.bool, device=ids_device)
    running_idx = torch.full((B, n_beams, max_length - T), -1, dtype=torch.int32, device=ids_device)
    finished_idx = running_idx.clone()
    offsets = torch.arange(B, device=ids_device)[:, None] * n_beams  # (B, 1) flat index of each prompt's beam 0

    logits, cache, layers_attn, layers_hidden = model._prefill_rows(prompt, model_kwargs, n_beams, extra)
    mask = prompt.attention_mask.repeat_interleave(n_beams, 0)  # (B*nb, T)
    all_ones = bool((mask == 1).all())
    next_positions = prompt.position_ids[:, -1].expand(B).repeat_interleave(n_beams) + 1  # (B*nb,)
    flat_sequences = prompt.input_ids.repeat_interleave(n_beams, 0)  # (B*nb, T)
    cur = T
    while True:
        if cur > T:  # feed each running beam's newest token
            flat_sequences = _flat(running[:, :, :cur])  # (B*nb, cur)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            out = model(input_ids=_to(flat_sequences[:, -1:], device),
                        position_ids=_to(next_positions[:, None], device),
                        attention_mask=None if all_ones else _to(mask, device), cache=cache,
                        use_cache=True, return_dict=True, **extra)
            next_positions = next_positions + 1
            cache = out.cache
            logits = out.logits[:, -1].to(dtype=torch.float32, device=ids_device, copy=True)  # (B*nb, V)
            layers_attn, layers_hidden = out.get("attentions"), out.get("hidden_states")
            del out
        V = logits.shape[-1]
        log_probs = processors(flat_sequences, torch.log_softmax(logits, dim=-1))  # (B*nb, V)
        if want["output_scores"]:
            all_scores.append(log_probs.clone())
        if want["output_logits"]:
            raw_logits.append(logits.clone())
        if want["output_attentions"]:
            attentions.append(layers_attn)
        if want["output_hidden_states"]:
            hiddens.append(layers_hidden)

        # Candidates: every (beam, token) of a prompt, by summed log-probability.
        summed = (log_probs.view(B, n_beams, V) + running_scores[:, :, None]).view(B, n_beams * V)
        if config.do_sample:  # draw `keep` candidates without replacement, then order them by score
            cand = torch.multinomial(torch.softmax(summed, dim=-1), num_samples=keep)  # (B, K)
            cand_scores, order = summed.gather(1, cand).sort(dim=-1, descending=True)
            cand = cand.gather(-1, order)
        else:
            cand_scores, cand = torch.topk(summed, k=keep)  # (B, K) each
        source = cand // V  # (B, K) the beam each candidate extends
        cand_seqs = _gather(running, source)  # (B, K, L)
        cand_seqs[:, :, cur] = cand % V
        cand_idx = _gather(running_idx, source)  # (B, K, L - T)
        cand_idx[:, :, cur - T] = source + offsets

        hits = criteria(_flat(cand_seqs[:, :, :cur + 1]), tuple(all_scores) if want["output_scores"] else None)
        hits = hits.view(B, keep)  # (B, K)

        # The best num_beams candidates that did not stop keep running.
        open_scores = cand_scores + hits.to(torch.float32) * NEG  # (B, K)
        best_open = torch.topk(open_scores, k=n_beams)[1]  # (B, nb)
        running = _gather(cand_seqs, best_open)
        running_scores = _gather(open_scores, best_open)
        running_idx = _gather(cand_idx, best_open)

        # Candidates among the top num_beams that stopped join the finished pool if they beat it.
        just_finished = hits & top_beams[None, :]  # (B, K)
        normalised = cand_scores / ((cur + 1 - T) ** length_penalty)  # (B, K)
        pool_full = torch.all(is_finished, dim=-1, keepdim=True) & (early_stopping is True)  # (B, 1)
        normalised = normalised + pool_full.to(torch.float32) * NEG
        normalised = normalised + (~improvable).to(torch.float32) * NEG
        normalised = normalised + (~just_finished) * NEG
        merged_scores = torch.cat([finished_scores, normalised], dim=1)  # (B, nb + K)
        best = torch.topk(merged_scores, k=n_beams)[1]  # (B, nb)
        finished_seqs = _gather(torch.cat([finished_seqs, cand_seqs], dim=1), best)
        finished_scores = _gather(merged_scores, best)
        finished_idx = _gather(torch.cat([finished_idx, cand_idx], dim=1), best)
        is_finished = _gather(torch.cat([is_finished, just_finished], dim=1), best)

        cache.reorder_cache(_flat(running_idx[..., cur - T]).long().to(device))  # rows of the chosen beams
        cur += 1

        # Can the best running beam still beat the worst finished one (transformers' heuristic)?
        if early_stopping == "never" and length_penalty > 0.0:
            best_length = max_length - T
        else:
            best_length = cur - T
        best_running = running_scores[:, :1] / (best_length ** length_penalty)  # (B, 1)
        worst_finished = torch.where(is_finished, torch.min(finished_scores, dim=1, keepdim=True)[0], NEG)
        improvable = improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
        open_beam = ~(torch.all(is_finished) & (early_stopping is True))
        can_continue = ~torch.all(hits)
        if not bool(torch.any(improvable) & open_beam & can_continue):
            break

    sequences = _flat(finished_seqs[:, :n_return])  # (B*n, L)
    sequences_scores = _flat(finished_scores[:, :n_return])  # (B*n,)
    beam_indices = _flat(finished_idx[:, :n_return])  # (B*n, L - T)
    generated = int(((beam_indices + 1).bool()).sum(dim=1).max())  # the longest returned continuation
    sequences, beam_indices = sequences[:, :T + generated], beam_indices[:, :generated]
    if not dict_out:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=sequences_scores if want["output_scores"] else None,
        scores=tuple(all_scores) if want["output_scores"] else None,
        logits=tuple(raw_logits) if want["output_logits"] else None, beam_indices=beam_indices,
        attentions=tuple(attentions) if want["output_attentions"] else None,
        hidden_states=tuple(hiddens) if want["output_hidden_states"] else None, cache=cache)
