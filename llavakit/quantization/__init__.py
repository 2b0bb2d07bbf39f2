"""Quantized inference and training: bitsandbytes 4/8-bit layers and llavakit's own int8/int4 weight-only layers.

    from llavakit.quantization import quantize_
    quantize_(model, "int8")  # or "int4", "nf4", BitsAndBytesConfig(load_in_4bit=True, ...)
"""

from llavakit.quantization.apply import quantize_
from llavakit.quantization.config import BitsAndBytesConfig, WeightOnlyConfig, parse_config

__all__ = ["BitsAndBytesConfig", "WeightOnlyConfig", "parse_config", "quantize_"]
