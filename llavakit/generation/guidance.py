"""Classifier-free guidance (`guidance_scale`): push the scores away from an unconditional continuation.

The unconditional branch is a second, image-free run of the same model on `negative_prompt_ids` (by default
just the prompt's last token), kept going with its own KV cache alongside the main decode.
"""

from __future__ import annotations

from typing import Any

import torch

from llavakit.models.cache import DynamicCache


class UnbatchedClassifierFreeGuidanceLogitsProcessor:
    """scores = scale * (logp_cond - logp_uncond) + logp_uncond, with log-softmaxed scores."""

    def __init__(self, guidance_scale: float, model: Any, unconditional_ids: torch.LongTensor | None = None,
                 unconditional_attention_mask: torch.LongTensor | None = None, use_cache: bool = True) -> None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            raise ValueError(f"guidance_scale must be a number, got {guidance_scale!r}")
        self.guidance_scale = float(guidance_scale)
        self.model = model
        self.ids = unconditional_ids  # (B, T_neg) or None: the prompt's last token
        self.mask = unconditional_attention_mask
        self.use_cache = use_cache
        self.cache: DynamicCache | None = None
        self.first = True

    def unconditional_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """The unconditional branch's next-token logits (B, V), advanced by the newest token after the first call."""
        if self.first:
            if self.ids is None:
                self.ids = input_ids[:, -1:]
            if self.mask is None:
                self.mask = torch.ones_like(self.ids, dtype=torch.long)
            ids, self.first = self.ids, False
        else:
            self.mask = torch.cat([self.mask, torch.ones_like(input_ids[:, -1:])], dim=1)  # (B, T_neg + 1)
            ids = input_ids[:, -1:] if self.use_cache else torch.cat([self.ids, input_ids[:, -1:]], dim=1)
            self.ids = ids
        device = self.model.device
        # Positions count from the cache length, as in transformers' unconditional branch.
        out = self.model(input_ids=ids.to(device), attention_mask=self.mask.to(device), use_cache=self.use_cache,
                         cache=self.cache if self.use_cache else None, return_dict=True)
        self.cache = out.cache if self.use_cache else None
        return out.logits[:, -1].float().to(input_ids.device)  # (B, V)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.log_softmax(dim=-1)
        if self.guidance_scale == 1:
            return scores
        uncond = self.unconditional_logits(input_ids).log_softmax(dim=-1)  # (B, V)
        return self.guidance_scale * (scores - uncond) + uncond
