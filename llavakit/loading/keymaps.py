"""Tensor-name tables: how the checkpoint layouts in the wild map onto llavakit's module names.

llavakit's modules are named like the published llava-hf files ("the Hub layout"), so a Hub
checkpoint loads with no renaming at all. The tables below handle the genuinely different layouts:

- what transformers 5 writes: `vision_tower.*` without the `vision_model.` level;
- transformers 4.52+ in-memory names: `model.language_model.*`, `model.vision_tower.*`, `lm_head.*`.

Each rule is (old prefix, new prefix), applied to the start of a key, first match wins.
"""

from __future__ import annotations

# Any layout -> the Hub layout of a LLaVA checkpoint (what LlavaForConditionalGeneration's modules use).
LLAVA_TO_HUB: list[tuple[str, str]] = [
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.vision_tower.", "vision_tower.vision_model."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("model.image_newline", "image_newline"),
    ("model.vision_resampler.", "vision_resampler."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower.vision_model."),  # already Hub layout: keep
    ("vision_tower.", "vision_tower.vision_model."),  # transformers 5 save
]

# Hub layout -> the base LlavaModel's modules (its language model has no `.model` level and no head).
LLAVA_HUB_TO_BASE: list[tuple[str, str]] = [("language_model.model.", "language_model.")]
LLAVA_BASE_TO_HUB: list[tuple[str, str]] = [("language_model.", "language_model.model.")]

# A bare CLIP vision model saved by transformers 5 has no `vision_model.` level either.
CLIP_TO_HUB: list[tuple[str, str]] = [("vision_model.", "vision_model."), ("", "vision_model.")]


def rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply the first rule whose old prefix starts `key`; keys matching no rule are returned unchanged."""
    for old, new in rules:
        if key.startswith(old):
            return new + key[len(old):]
    return key


# A decoder without its head (LlamaModel) loads from a causal-LM checkpoint by dropping `model.`.
DECODER_HUB_TO_BASE: list[tuple[str, str]] = [("model.", "")]
DECODER_BASE_TO_HUB: list[tuple[str, str]] = [("", "model.")]

# Checkpoint tensors that carry nothing a model needs: stale RoPE tables, and the head when a base
# model (no head) is loaded from a full checkpoint.
ALWAYS_IGNORED = (".rotary_emb.inv_freq", "embeddings.position_ids")
BASE_MODEL_IGNORED = ("language_model.lm_head.", "lm_head.")

LLAVA_BASE_MODELS = ("LlavaModel", "VipLlavaModel", "LlavaNextModel", "LlavaOnevisionModel", "LlavaNextVideoModel")
BASE_MODELS = LLAVA_BASE_MODELS + ("LlamaModel", "MistralModel", "Qwen2Model")

# Task heads (llavakit/models/heads.py): the family's base model under `model.`, an optional `lm_head`, and the
# head's own tensors (`score.*`, `qa_outputs.*`, `classifier.*`), which no rule touches.
HEAD_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")
LM_HEAD_SUFFIXES = ("ForMultipleChoice",)  # scores options with the LM head, so it keeps it
LLAVA_HUB_TO_HEAD: list[tuple[str, str]] = [("language_model.model.", "model.language_model."),
                                            ("language_model.lm_head.", "lm_head."),
                                            ("vision_tower.", "model.vision_tower."),
                                            ("multi_modal_projector.", "model.multi_modal_projector."),
                                            ("image_newline", "model.image_newline")]


def layout_rules(model_class_name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(rules to the Hub layout, rules from the Hub layout to this class's modules) for a model class."""
    if model_class_name in ("LlavaForConditionalGeneration", "VipLlavaForConditionalGeneration",
                            "LlavaNextForConditionalGeneration", "LlavaOnevisionForConditionalGeneration",
                            "LlavaNextVideoForConditionalGeneration"):
        return LLAVA_TO_HUB, []
    if model_class_name in LLAVA_BASE_MODELS:
        return LLAVA_TO_HUB, LLAVA_HUB_TO_BASE
    if model_class_name.endswith(HEAD_SUFFIXES + LM_HEAD_SUFFIXES):
        return LLAVA_TO_HUB, LLAVA_HUB_TO_HEAD
    if model_class_name in ("CLIPVisionModel", "SiglipVisionModel"):  # same layouts, same rules
        return CLIP_TO_HUB, []
    if model_class_name in ("LlamaModel", "MistralModel", "Qwen2Model"):
        return [], DECODER_HUB_TO_BASE
    return [], []  # causal decoders: checkpoint names are module names


def is_ignored(hub_key: str, model_class_name: str) -> bool:
    """True for checkpoint tensors this class skips on purpose."""
    if hub_key.endswith(ALWAYS_IGNORED):
        return True
    drops_head = model_class_name in BASE_MODELS or model_class_name.endswith(HEAD_SUFFIXES)
    return drops_head and hub_key.startswith(BASE_MODEL_IGNORED)


def save_rules(model_class_name: str) -> list[tuple[str, str]]:
    """Rules from this class's module names to the Hub layout that save_pretrained writes."""
    if model_class_name in LLAVA_BASE_MODELS:
        return LLAVA_BASE_TO_HUB
    if model_class_name in ("LlamaModel", "MistralModel", "Qwen2Model"):
        return DECODER_BASE_TO_HUB
    return []


# Original (liuhaotian / mucai / lmms-lab) LLaVA checkpoints -> the Hub layout. Ordered, first match wins;
# a key no rule matches is an error (see llavakit/loading/original.py). ViP's projector is a LayerNorm plus
# a Sequential(Linear, GELU, Linear); LLaVA's is the bare Sequential.
ORIGINAL_TO_HUB: list[tuple[str, str]] = [
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.mm_projector.clip_layernorm.", "multi_modal_projector.projector_layernorm."),
    ("model.mm_projector.final_linear.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.final_linear.2.", "multi_modal_projector.linear_2."),
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("model.embed_tokens.", "language_model.model.embed_tokens."),
    ("model.layers.", "language_model.model.layers."),
    ("model.norm.", "language_model.model.norm."),
    ("lm_head.", "language_model.lm_head."),
]
# Original tensors that carry nothing: stale RoPE tables, lmms-lab's parameter-free resampler.
ORIGINAL_DROPPED = (".rotary_emb.inv_freq", "model.vision_resampler.")

# A separate CLIP checkpoint (full CLIPModel or a bare vision model) -> LLaVA's vision tower; its text half
# and projections are not part of LLaVA.
CLIP_TOWER_TO_HUB: list[tuple[str, str]] = [("vision_model.", "vision_tower.vision_model."),
                                            ("", "vision_tower.vision_model.")]
CLIP_TOWER_DROPPED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale")
