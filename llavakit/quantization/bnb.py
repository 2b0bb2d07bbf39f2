"""bitsandbytes quantization: decoder nn.Linear -> bnb Linear4bit (fp4/nf4) or Linear8bitLt (LLM.int8).

Each layer is quantized from its already-loaded full-precision weight as it moves to `device` (default: where
the weight is). bitsandbytes >= 0.50 also runs these layers on CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llavakit.quantization.config import BitsAndBytesConfig
from llavakit.quantization.select import linears_to_quantize, replace_module


def import_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as err:
        raise ImportError("quantization_config=BitsAndBytesConfig(...) needs bitsandbytes: "
                          "pip install 'llavakit[quant]' (or pip install bitsandbytes)") from err
    return bitsandbytes


def to_bnb_linear(linear: nn.Linear, config: BitsAndBytesConfig, device: torch.device) -> nn.Module:
    """One bnb layer holding `linear`'s weight, quantized on `device`; the bias stays in its dtype."""
    bnb = import_bitsandbytes()
    has_bias = linear.bias is not None
    weight = linear.weight.detach()
    if config.load_in_4bit:
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                compute_dtype=config.bnb_4bit_compute_dtype,
                                compress_statistics=config.bnb_4bit_use_double_quant,
                                quant_type=config.bnb_4bit_quant_type, quant_storage=config.bnb_4bit_quant_storage,
                                device="meta")
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=config.bnb_4bit_use_double_quant,
                                       quant_type=config.bnb_4bit_quant_type,
                                       quant_storage=config.bnb_4bit_quant_storage, module=new).to(device)
    else:
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                  has_fp16_weights=config.llm_int8_has_fp16_weight,
                                  threshold=config.llm_int8_threshold, device="meta")
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False,
                                       has_fp16_weights=config.llm_int8_has_fp16_weight).to(device)
    if has_bias:
        new.bias = nn.Parameter(linear.bias.detach().to(device), requires_grad=False)
    return new.requires_grad_(False).train(linear.training)


def quantize_bnb(model: nn.Module, config: BitsAndBytesConfig, device: torch.device | None = None) -> list[str]:
    """Replace the selected Linears in place; returns their names. `device`: where they end up (default: theirs)."""
    import_bitsandbytes()
    if config.llm_int8_enable_fp32_cpu_offload:
        raise ValueError("llm_int8_enable_fp32_cpu_offload is not supported: llavakit keeps the model on one device")
    names = linears_to_quantize(model, config.skip_modules)
    for name in names:
        linear = model.get_submodule(name)
        replace_module(model, name, to_bnb_linear(linear, config, device or linear.weight.device))
    return names
