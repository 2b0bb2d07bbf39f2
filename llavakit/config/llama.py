"""LlamaConfig and MistralConfig: the decoder-only language models behind LLaVA checkpoints.

RoPE settings are kept in one dict, `rope_parameters` ({"rope_type", "rope_theta", ...scaling keys}),
the transformers 5 form. The older `rope_theta` + `rope_scaling` keys are read and also written, so
config.json files stay readable by every transformers version.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from llavakit.config.base import PretrainedConfig, check_positive

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclasses.dataclass(init=False)
class LlamaConfig(PretrainedConfig):
    """Defaults are Llama-2-7B's, as in transformers."""

    model_type: ClassVar[str] = "llama"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1
    tie_word_embeddings: bool = False
    rope_parameters: dict[str, Any] | None = None  # None: {"rope_type": "default", "rope_theta": 10000.0}
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    sliding_window: int | None = None  # Llama never uses it; Mistral and Qwen2 do

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        rope = dict(self.rope_parameters or {})
        rope.setdefault("rope_theta", 10000.0)
        rope["rope_type"] = rope.pop("type", rope.get("rope_type", "default"))
        self.rope_parameters = rope
        super().__post_init__()

    @classmethod
    def _rename_legacy_keys(cls, data: dict[str, Any]) -> dict[str, Any]:
        theta = data.pop("rope_theta", None)
        scaling = data.pop("rope_scaling", None)
        if data.get("rope_parameters") is None and (theta is not None or scaling is not None):
            rope = dict(scaling or {})
            if theta is not None:
                rope["rope_theta"] = theta
            data["rope_parameters"] = rope
        return data

    def validate(self) -> None:
        check_positive(self, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                       "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
        name = type(self).__name__
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"{name}.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.hidden_act != "silu":
            raise ValueError(f"{name}.hidden_act must be 'silu', got {self.hidden_act!r}")
        rope_type = self.rope_parameters["rope_type"]
        if rope_type not in ROPE_TYPES:
            raise ValueError(f"{name}: rope_type {rope_type!r} is not supported; supported: {ROPE_TYPES}")
        if rope_type != "default" and "factor" not in self.rope_parameters:
            raise ValueError(f"{name}: rope_type {rope_type!r} needs a 'factor' in rope_parameters")
        if self.sliding_window is not None:
            check_positive(self, "sliding_window")

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        rope = dict(out.pop("rope_parameters"))
        out["rope_theta"] = rope.pop("rope_theta")
        out["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
        if type(self) is LlamaConfig and out.get("sliding_window") is None:
            out.pop("sliding_window")
        return out


@dataclasses.dataclass(init=False)
class MistralConfig(LlamaConfig):
    """Mistral-7B defaults: GQA with 8 KV heads and a 4096-token sliding window (None turns it off)."""

    model_type: ClassVar[str] = "mistral"

    intermediate_size: int = 14336
    num_key_value_heads: int | None = 8
    max_position_embeddings: int = 4096 * 32
    sliding_window: int | None = 4096
