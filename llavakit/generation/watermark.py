"""Watermarking (`watermarking_config`): bias a pseudo-random "green list" of tokens, seeded by the previous
token, so a detector that knows the key can recognise generated text (Kirchenbauer et al., 2023).

The green list comes from torch.randperm with a generator seeded exactly as transformers seeds it, so the
same key marks the same tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

TABLE_SIZE = 1_000_003


@dataclasses.dataclass
class WatermarkingConfig:
    """Options of the green-list watermark; `generate(watermarking_config=...)` also takes a dict of them."""

    greenlist_ratio: float = 0.25
    bias: float = 2.0
    hashing_key: int = 15485863
    seeding_scheme: str = "lefthash"  # "lefthash": seed from the previous token; "selfhash": also the candidate
    context_width: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the bad option."""
        if self.seeding_scheme not in ("selfhash", "lefthash"):
            raise ValueError(f"watermarking_config.seeding_scheme must be 'selfhash' or 'lefthash', "
                             f"got {self.seeding_scheme!r}")
        if not 0.0 < self.greenlist_ratio < 1.0:
            raise ValueError(f"watermarking_config.greenlist_ratio must be in (0, 1), got {self.greenlist_ratio!r}")
        if not isinstance(self.context_width, int) or self.context_width < 1:
            raise ValueError(f"watermarking_config.context_width must be a positive integer, "
                             f"got {self.context_width!r}")

    @classmethod
    def from_any(cls, value: Any) -> "WatermarkingConfig":
        """Accept our config, a dict, or transformers' WatermarkingConfig (read through its attributes)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"watermarking_config has unknown keys {unknown}")
            return cls(**value)
        if all(hasattr(value, f.name) for f in dataclasses.fields(cls)):
            return cls(**{f.name: getattr(value, f.name) for f in dataclasses.fields(cls)})
        raise ValueError(f"watermarking_config must be a WatermarkingConfig or a dict, got {type(value).__name__}")

    def construct_processor(self, vocab_size: int, device: Any = "cpu") -> "WatermarkLogitsProcessor":
        return WatermarkLogitsProcessor(vocab_size, device, self.greenlist_ratio, self.bias, self.hashing_key,
                                        self.seeding_scheme, self.context_width)


class WatermarkLogitsProcessor:
    """Add `bias` to the scores of each row's green-list tokens."""

    def __init__(self, vocab_size: int, device: Any = "cpu", greenlist_ratio: float = 0.25, bias: float = 2.0,
                 hashing_key: int = 15485863, seeding_scheme: str = "lefthash", context_width: int = 1) -> None:
        WatermarkingConfig(greenlist_ratio, bias, hashing_key, seeding_scheme, context_width)  # validates
        self.vocab_size = vocab_size
        self.greenlist_size = int(vocab_size * greenlist_ratio)
        self.bias, self.hash_key = bias, hashing_key
        self.seeding_scheme, self.context_width = seeding_scheme, context_width
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(hashing_key)
        self.fixed_table = torch.randperm(TABLE_SIZE, generator=self.rng, device=device)  # (TABLE_SIZE,)

    def _seed(self, context: torch.LongTensor) -> None:
        context = context[-self.context_width:]
        if self.seeding_scheme == "selfhash":
            a = self.fixed_table[context % TABLE_SIZE] + 1
            b = self.fixed_table[context[-1] % TABLE_SIZE] + 1
            seed = (self.hash_key * a * b).min().item()
        else:
            seed = self.hash_key * context[-1].item()
        self.rng.manual_seed(seed % (2**64 - 1))

    def greenlist(self, context: torch.LongTensor) -> torch.LongTensor:
        """The green token ids after `context` (T,)."""
        self._seed(context)
        return torch.randperm(self.vocab_size, device=context.device, generator=self.rng)[:self.greenlist_size]

    def _selfhash_greenlist(self, context: torch.LongTensor, scores: torch.Tensor) -> torch.LongTensor:
        """selfhash: of the 40 best candidates, those that are green when seeded with themselves appended."""
        ranked = scores.sort(dim=-1, descending=True)[1]  # (V,)
        green = [ranked[i] for i in range(40)
                 if ranked[i] in self.greenlist(torch.cat([context, ranked[i, None]], dim=-1))]
        return torch.tensor(green, device=context.device, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] < self.context_width:
            return scores
        out = scores.clone()
        for row, context in enumerate(input_ids):
            green = (self._selfhash_greenlist(context, scores[row]) if self.seeding_scheme == "selfhash"
                     else self.greenlist(context))
            out[row, green] = out[row, green] + self.bias
        return out
