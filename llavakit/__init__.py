"""llavakit: LLaVA-family vision-language models in plain PyTorch, with the transformers API.

    from llavakit import AutoProcessor, LlavaForConditionalGeneration

Names are imported lazily, so `import llavakit` stays fast and a CLI start does not pay for torch
model code it does not use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # configs
    "PretrainedConfig": "llavakit.config",
    "AutoConfig": "llavakit.config",
    "CLIPVisionConfig": "llavakit.config",
    "LlamaConfig": "llavakit.config",
    "MistralConfig": "llavakit.config",
    "LlavaConfig": "llavakit.config",
    "VipLlavaConfig": "llavakit.config",
    "Qwen2Config": "llavakit.config",
    "SiglipVisionConfig": "llavakit.config",
    "LlavaNextConfig": "llavakit.config",
    "LlavaOnevisionConfig": "llavakit.config",
    "LlavaNextVideoConfig": "llavakit.config",
    # models
    "CLIPVisionModel": "llavakit.models.clip",
    "SiglipVisionModel": "llavakit.models.siglip",
    "Qwen2Model": "llavakit.models.qwen2",
    "Qwen2ForCausalLM": "llavakit.models.qwen2",
    "LlamaModel": "llavakit.models.llama",
    "LlamaForCausalLM": "llavakit.models.llama",
    "MistralModel": "llavakit.models.llama",
    "MistralForCausalLM": "llavakit.models.llama",
    "LlavaMultiModalProjector": "llavakit.models.llava",
    "LlavaModel": "llavakit.models.llava",
    "LlavaForConditionalGeneration": "llavakit.models.llava",
    "VipLlavaMultiModalProjector": "llavakit.models.vipllava",
    "VipLlavaModel": "llavakit.models.vipllava",
    "VipLlavaForConditionalGeneration": "llavakit.models.vipllava",
    "LlavaNextModel": "llavakit.models.llava_next",
    "LlavaNextForConditionalGeneration": "llavakit.models.llava_next",
    "LlavaOnevisionModel": "llavakit.models.llava_onevision",
    "LlavaOnevisionForConditionalGeneration": "llavakit.models.llava_onevision",
    "LlavaNextVideoModel": "llavakit.models.llava_next_video",
    "LlavaNextVideoForConditionalGeneration": "llavakit.models.llava_next_video",
    "LlavaCausalLMOutputWithPast": "llavakit.models.outputs",
    "LlavaModelOutputWithPast": "llavakit.models.outputs",
    "DynamicCache": "llavakit.models.cache",
    "StaticCache": "llavakit.models.cache",
    "AutoModelForImageTextToText": "llavakit.models.auto",
    "AutoModelForVision2Seq": "llavakit.models.auto",
    "AutoModel": "llavakit.models.auto",
    "AutoModelForCausalLM": "llavakit.models.auto",
    # quantization
    "BitsAndBytesConfig": "llavakit.quantization",
    "WeightOnlyConfig": "llavakit.quantization",
    # task heads
    "LlavaForSequenceClassification": "llavakit.models.heads",
    "LlavaForTokenClassification": "llavakit.models.heads",
    "LlavaForQuestionAnswering": "llavakit.models.heads",
    "LlavaForMultipleChoice": "llavakit.models.heads",
    "LlavaNextForSequenceClassification": "llavakit.models.heads",
    "LlavaNextForTokenClassification": "llavakit.models.heads",
    "LlavaNextForQuestionAnswering": "llavakit.models.heads",
    "LlavaNextForMultipleChoice": "llavakit.models.heads",
    "VipLlavaForSequenceClassification": "llavakit.models.heads",
    "VipLlavaForTokenClassification": "llavakit.models.heads",
    "VipLlavaForQuestionAnswering": "llavakit.models.heads",
    "VipLlavaForMultipleChoice": "llavakit.models.heads",
    "LlavaForMaskedLM": "llavakit.models.heads",
    # the older API page's names (aliases)
    "LlaVaConfig": "llavakit.compat",
    "LlaVaTokenizer": "llavakit.compat",
    "LlaVaTokenizerFast": "llavakit.compat",
    "LlaVaModel": "llavakit.compat",
    "LlaVaForCausalLM": "llavakit.compat",
    "LlaVaProcessor": "llavakit.compat",
    "LlaVaForSequenceClassification": "llavakit.compat",
    "LlaVaForTokenClassification": "llavakit.compat",
    "LlaVaForQuestionAnswering": "llavakit.compat",
    "LlaVaForMultipleChoice": "llavakit.compat",
    "LlaVaForMaskedLM": "llavakit.compat",
    # processing
    "BatchFeature": "llavakit.processing.batch",
    "CLIPImageProcessor": "llavakit.processing.image",
    "SiglipImageProcessor": "llavakit.processing.image_siglip",
    "LlavaImageProcessor": "llavakit.processing.image_llava",
    "PreTrainedTokenizerFast": "llavakit.processing.tokenizer",
    "AutoTokenizer": "llavakit.processing.tokenizer",
    "LlamaTokenizerFast": "llavakit.processing.tokenizer",
    "LlavaProcessor": "llavakit.processing.llava",
    "LlavaNextImageProcessor": "llavakit.processing.image_next",
    "LlavaNextProcessor": "llavakit.processing.llava_next",
    "AutoProcessor": "llavakit.processing.auto",
    "AutoImageProcessor": "llavakit.processing.auto",
    "AutoVideoProcessor": "llavakit.processing.auto",
    "LlavaOnevisionImageProcessor": "llavakit.processing.image_onevision",
    "LlavaOnevisionVideoProcessor": "llavakit.processing.video_processor",
    "LlavaNextVideoVideoProcessor": "llavakit.processing.video_processor",
    "LlavaOnevisionProcessor": "llavakit.processing.llava_onevision",
    "LlavaNextVideoProcessor": "llavakit.processing.llava_next_video",
    "load_video": "llavakit.processing.video",
    # generation
    "GenerationConfig": "llavakit.generation.config",
    "TextIteratorStreamer": "llavakit.generation.streamer",
    "TextStreamer": "llavakit.generation.streamer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'llavakit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
