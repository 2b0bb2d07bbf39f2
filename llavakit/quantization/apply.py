"""quantize_: swap a loaded model's decoder Linears for quantized ones, in place (used by from_pretrained too)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llavakit.quantization.config import BitsAndBytesConfig, parse_config
from llavakit.quantization.select import linears_to_quantize, replace_module
from llavakit.quantization.weight_only import Int4WeightOnlyLinear, Int8WeightOnlyLinear


def quantize_(model: nn.Module, config: Any = "int8", device: torch.device | str | None = None) -> nn.Module:
    """Quantize `model` in place and return it. `config`: "int8", "int4", "nf4", "fp4", "bnb-int8", a
    BitsAndBytesConfig / WeightOnlyConfig (ours or transformers'), or a dict. The vision tower, projector
    and heads stay in full precision unless the config lists its own skip modules."""
    config = parse_config(config)
    if getattr(model, "is_quantized", False):
        raise ValueError("this model is already quantized; load it again in full precision to quantize it differently")
    device = None if device is None else torch.device(device)
    if isinstance(config, BitsAndBytesConfig):
        from llavakit.quantization.bnb import quantize_bnb

        names = quantize_bnb(model, config, device)
        model.is_loaded_in_4bit, model.is_loaded_in_8bit = config.load_in_4bit, config.load_in_8bit
        model.quantization_method = "bitsandbytes"
    else:
        names = linears_to_quantize(model, config.skip_modules)
        with torch.no_grad():
            for name in names:
                linear = model.get_submodule(name)
                if device is not None:
                    linear = linear.to(device)
                new = (Int8WeightOnlyLinear.from_linear(linear) if config.bits == 8
                       else Int4WeightOnlyLinear.from_linear(linear, config.group_size, name))
                replace_module(model, name, new.train(linear.training))
        model.quantization_method = "weight_only"
    if not names:
        raise ValueError(f"no Linear layer of {type(model).__name__} was left to quantize with skip modules "
                         f"{list(config.skip_modules)}")
    if device is not None:
        model.to(device)
    model.is_quantized = True
    model.quantization_config = config
    return model
