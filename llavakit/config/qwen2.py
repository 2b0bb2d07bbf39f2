"""Qwen2Config: the Qwen1.5 / Qwen2 decoder (model_type "qwen2"), the language model of LLaVA-Interleave.

Same settings as LlamaConfig, plus Qwen2's sliding-window switches: the window applies only when
`use_sliding_window`, and then only to layers `>= max_window_layers` (spelled out in `layer_types`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llavakit.config.llama import LlamaConfig

LAYER_TYPES = ("full_attention", "sliding_attention")
# LlamaConfig fields Qwen2 does not have (its biases are fixed: q/k/v yes, o_proj and MLP no); not written out.
_NOT_QWEN2_KEYS = ("attention_bias", "mlp_bias", "pretraining_tp")


@dataclasses.dataclass(init=False)
class Qwen2Config(LlamaConfig):
    """Defaults are Qwen2-7B's, as in transformers."""

    model_type: ClassVar[str] = "qwen2"

    vocab_size: int = 151936
    intermediate_size: int = 22016
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = 4096  # set to None unless use_sliding_window, as transformers does
    max_window_layers: int = 28
    layer_types: list[str] | None = None  # None: "sliding_attention" for layers >= max_window_layers if windowed

    def __post_init__(self) -> None:
        if not self.use_sliding_window:
            self.sliding_window = None
        self.mlp_bias = False
        if self.layer_types is None and isinstance(self.num_hidden_layers, int):
            windowed = self.sliding_window is not None
            self.layer_types = ["sliding_attention" if windowed and i >= self.max_window_layers else "full_attention"
                                for i in range(self.num_hidden_layers)]
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        types = self.layer_types
        if not isinstance(types, list) or len(types) != self.num_hidden_layers or any(t not in LAYER_TYPES
                                                                                       for t in types):
            raise ValueError(f"Qwen2Config.layer_types must list one of {LAYER_TYPES} per layer "
                             f"({self.num_hidden_layers} layers), got {types!r}")
        if "sliding_attention" in types and self.sliding_window is None:
            raise ValueError("Qwen2Config.layer_types has sliding_attention layers but sliding_window is None "
                             "(set use_sliding_window=True and a sliding_window)")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in _NOT_QWEN2_KEYS:
            out.pop(key, None)
        return out
