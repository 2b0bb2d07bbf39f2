"""LoRA through peft: adapters on the language model's linear layers, the projector trained in full,
saved in peft's format with transformers' module names so `PeftModel.from_pretrained` loads them onto
transformers' LlavaForConditionalGeneration; `merge_adapter` folds them into a plain llava-hf checkpoint.
QLoRA trains the same adapters over a 4-bit nf4 language model (`load_qlora_base`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from llavakit.loading import keymaps

# Every linear of the decoder blocks (LLaVA's find_all_linear_names: not the vision tower, projector or head).
# The pattern matches both llavakit's names and transformers' (`model.language_model.layers...`).
TARGET_MODULES = r".*language_model\.(model\.)?layers\.\d+\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
PREFIX = "base_model.model."
# llavakit (Hub layout) names -> transformers 5 in-memory names, which peft uses as adapter keys.
TO_TRANSFORMERS = [("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                   ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")]
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json",
                   "chat_template.jinja", "chat_template.json", "special_tokens_map.json")


def _peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA training needs peft: pip install 'llavakit[train]' (or pip install peft)") from err
    return peft


def check_lora_available() -> None:
    """LoRA (training, merging) needs peft: fail before any model is loaded, with the install command."""
    _peft()


def check_qlora_available() -> None:
    """QLoRA needs bitsandbytes (>= 0.50 runs its 4-bit layers on CPU as well as CUDA); say so plainly."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError("QLoRA (--stage qlora) needs bitsandbytes: pip install 'llavakit[quant]' "
                         "(or pip install bitsandbytes)") from err


def load_qlora_base(path: str | os.PathLike, compute_dtype: Any = "float32", gradient_checkpointing: bool = False,
                    **kwargs: Any) -> nn.Module:
    """The base model for QLoRA: language model in 4-bit nf4 with double quantization (the QLoRA recipe),
    vision tower and projector in float32, prepared for k-bit training by peft (all frozen, norms in fp32)."""
    from llavakit import AutoModelForImageTextToText
    from llavakit.quantization import BitsAndBytesConfig

    check_qlora_available()
    peft = _peft()
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=compute_dtype)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype="float32", quantization_config=config, **kwargs)
    for module in model.modules():
        # bitsandbytes repacks CPU 4-bit weights into an inference-only layout on the first eval forward; its
        # backward does not go through that layout (the gradients come out wrong), so a model that trains keeps
        # the plain layout, also across mid-training evaluation.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model: nn.Module, r: int = 128, alpha: int = 256, dropout: float = 0.05) -> nn.Module:
    """Wrap `model` in a peft model: LoRA on the decoder linears, the projector fully trainable."""
    peft = _peft()
    if r < 1:
        raise ValueError(f"lora r must be >= 1, got {r}")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGET_MODULES,
                             modules_to_save=["multi_modal_projector"], bias="none")
    base_path = getattr(model, "name_or_path", None)
    config.base_model_name_or_path = str(base_path) if base_path else None
    return peft.get_peft_model(model, config)


def save_adapter(peft_model: nn.Module, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
    """peft's adapter files, with tensor names rewritten to transformers' LLaVA module names (`state_dict`: the
    whole model's, when the model itself is sharded)."""
    from safetensors.torch import load_file, save_file

    peft_model.save_pretrained(save_directory, state_dict=state_dict)
    path = Path(save_directory) / "adapter_model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for key, value in tensors.items():
        inner = key[len(PREFIX):] if key.startswith(PREFIX) else key
        renamed[PREFIX + keymaps.rename(inner, TO_TRANSFORMERS)] = value
    save_file(renamed, path, metadata={"format": "pt"})


def load_adapter(model: nn.Module, adapter_directory: str | os.PathLike) -> nn.Module:
    """A llavakit LLaVA model with the saved adapter applied (a peft model)."""
    from safetensors.torch import load_file

    peft = _peft()
    config = peft.LoraConfig.from_pretrained(str(adapter_directory))
    peft_model = peft.get_peft_model(model, config)
    tensors = load_file(Path(adapter_directory) / "adapter_model.safetensors")
    ours = {}
    for key, value in tensors.items():
        inner = key[len(PREFIX):] if key.startswith(PREFIX) else key
        ours[PREFIX + keymaps.rename(inner, keymaps.LLAVA_TO_HUB)] = value
    result = peft.set_peft_model_state_dict(peft_model, ours)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{len(unexpected)} adapter tensors match no module of this model "
                         f"(first: {unexpected[0]}); was the adapter trained on another architecture?")
    return peft_model


def merge_adapter(adapter_directory: str | os.PathLike, output_directory: str | os.PathLike,
                  base: str | os.PathLike | None = None) -> None:
    """Base checkpoint + adapter -> a plain checkpoint (weights merged) with the processor files."""
    from llavakit import AutoModelForImageTextToText

    adapter_directory = Path(adapter_directory)
    config_path = adapter_directory / "adapter_config.json"
    check_lora_available()
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: --adapter must be a folder written by "
                                f"`llavakit train --stage lora`")
    base = base or json.loads(config_path.read_text())["base_model_name_or_path"]
    if not base:
        raise ValueError("the adapter does not name its base model; pass --base")
    model = AutoModelForImageTextToText.from_pretrained(base, dtype="float32")
    merged = load_adapter(model, adapter_directory).merge_and_unload()
    merged.save_pretrained(output_directory)
    source = adapter_directory if (adapter_directory / "tokenizer.json").exists() else Path(base)
    for name in PROCESSOR_FILES:
        if (source / name).exists():
            shutil.copy(source / name, Path(output_directory) / name)
