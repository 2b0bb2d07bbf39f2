"""Quantization settings: bitsandbytes (transformers' BitsAndBytesConfig field names) and our weight-only int8/int4.

`parse_config` turns whatever a user passes (our dataclasses, transformers' config objects, a dict, or a
short name like "int8") into one of the two dataclasses, rejecting contradictions with a clear message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from llavakit.config.base import dtype_from_str

# Kept in full precision unless the user lists its own skip modules: the vision tower and projector are
# small and sensitive (users expect them untouched), the LM head is often tied to the embeddings, and the
# task heads (score, qa_outputs, classifier) are tiny.
DEFAULT_SKIP = ("vision_tower", "multi_modal_projector", "lm_head", "score", "qa_outputs", "classifier")
BNB_QUANT_TYPES = ("fp4", "nf4")
INT4_GROUP_SIZES = (32, 64, 128, 256)
# short names for quantize_(model, name) and the CLI's --quantize
NAMES = ("int8", "int4", "nf4", "fp4", "bnb-int8", "int8_weight_only", "int4_weight_only")


@dataclasses.dataclass
class BitsAndBytesConfig:
    """bitsandbytes 8-bit (LLM.int8) or 4-bit (fp4/nf4) Linear layers; same fields and defaults as transformers'."""

    load_in_8bit: bool = False
    load_in_4bit: bool = False
    llm_int8_threshold: float = 6.0
    llm_int8_skip_modules: list[str] | None = None  # None: DEFAULT_SKIP
    llm_int8_enable_fp32_cpu_offload: bool = False
    llm_int8_has_fp16_weight: bool = False
    bnb_4bit_compute_dtype: Any = None  # None: float32, as in transformers
    bnb_4bit_quant_type: str = "fp4"
    bnb_4bit_use_double_quant: bool = False
    bnb_4bit_quant_storage: Any = None  # None: uint8
    quant_method: str = dataclasses.field(default="bitsandbytes", init=False)

    def __post_init__(self) -> None:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are both True; choose one")
        if not (self.load_in_4bit or self.load_in_8bit):
            raise ValueError("BitsAndBytesConfig needs load_in_4bit=True or load_in_8bit=True")
        if self.bnb_4bit_quant_type not in BNB_QUANT_TYPES:
            raise ValueError(f"bnb_4bit_quant_type must be one of {BNB_QUANT_TYPES}, got {self.bnb_4bit_quant_type!r}")
        self.bnb_4bit_compute_dtype = dtype_from_str(self.bnb_4bit_compute_dtype) or torch.float32
        self.bnb_4bit_quant_storage = dtype_from_str(self.bnb_4bit_quant_storage) or torch.uint8

    @property
    def skip_modules(self) -> tuple[str, ...]:
        return DEFAULT_SKIP if self.llm_int8_skip_modules is None else tuple(self.llm_int8_skip_modules)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["bnb_4bit_compute_dtype"] = str(self.bnb_4bit_compute_dtype).removeprefix("torch.")
        data["bnb_4bit_quant_storage"] = str(self.bnb_4bit_quant_storage).removeprefix("torch.")
        return data


@dataclasses.dataclass
class WeightOnlyConfig:
    """llavakit's own weight-only quantization: int8 per output channel, or int4 in groups of `group_size` inputs.

    Activations stay in floating point; on CPU the fused kernels run in bfloat16 and cast back.
    """

    bits: int = 8
    group_size: int = 128  # int4 only
    modules_to_not_convert: list[str] | None = None  # None: DEFAULT_SKIP
    quant_method: str = dataclasses.field(default="weight_only", init=False)

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"weight-only quantization supports bits=8 or bits=4, got {self.bits!r}")
        if self.bits == 4 and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {INT4_GROUP_SIZES}, got {self.group_size!r}")

    @property
    def skip_modules(self) -> tuple[str, ...]:
        return DEFAULT_SKIP if self.modules_to_not_convert is None else tuple(self.modules_to_not_convert)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QuantizationConfig = BitsAndBytesConfig | WeightOnlyConfig


def from_name(name: str, **options: Any) -> QuantizationConfig:
    """'int8' / 'int4' (weight-only, ours), 'nf4' / 'fp4' / 'bnb-int8' (bitsandbytes), or torchao's
    'int8_weight_only' / 'int4_weight_only' names."""
    if name in ("int8", "int8_weight_only"):
        return WeightOnlyConfig(bits=8, **options)
    if name in ("int4", "int4_weight_only"):
        return WeightOnlyConfig(bits=4, **options)
    if name in BNB_QUANT_TYPES:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=name, **options)
    if name == "bnb-int8":
        return BitsAndBytesConfig(load_in_8bit=True, **options)
    raise ValueError(f"unknown quantization {name!r}: choose one of {', '.join(NAMES)}")


def parse_config(config: Any) -> QuantizationConfig:
    """Our config, a transformers BitsAndBytesConfig / TorchAoConfig, their to_dict(), or a short name."""
    if isinstance(config, (BitsAndBytesConfig, WeightOnlyConfig)):
        return config
    if isinstance(config, str):
        return from_name(config)
    if not isinstance(config, dict):
        if not hasattr(config, "to_dict"):
            raise TypeError(f"quantization_config must be a BitsAndBytesConfig, WeightOnlyConfig, dict or name, "
                            f"got {type(config).__name__}")
        config = config.to_dict()
    data = dict(config)
    method = str(getattr(data.get("quant_method"), "value", data.get("quant_method", "bitsandbytes")))
    if method == "bitsandbytes":
        fields = {f.name for f in dataclasses.fields(BitsAndBytesConfig) if f.init}
        return BitsAndBytesConfig(**{k: v for k, v in data.items() if k in fields})
    if method == "torchao":
        quant_type = data.get("quant_type")
        if not isinstance(quant_type, str) or quant_type not in ("int8_weight_only", "int4_weight_only"):
            raise ValueError(f"torchao quant_type {quant_type!r} is not supported; llavakit runs "
                             f"'int8_weight_only' and 'int4_weight_only' with its own kernels")
        options = {k: v for k, v in (data.get("quant_type_kwargs") or {}).items() if k == "group_size"}
        if data.get("modules_to_not_convert") is not None:
            options["modules_to_not_convert"] = list(data["modules_to_not_convert"])
        return from_name(quant_type, **options)
    if method == "weight_only":
        fields = {f.name for f in dataclasses.fields(WeightOnlyConfig) if f.init}
        return WeightOnlyConfig(**{k: v for k, v in data.items() if k in fields})
    raise ValueError(f"quant_method {method!r} is not supported; llavakit supports bitsandbytes and weight-only "
                     f"int8/int4 (torchao names int8_weight_only / int4_weight_only)")
