"""Original LLaVA checkpoints (liuhaotian v1.5 / v1.6, mucai/ViP, -lora folders): config.json and tensor names -> ours.

`from_pretrained` on such a folder lands here through a hook in load.py. The conversion follows
transformers' convert_llava_weights_to_hf.py: `<image>` and `<pad>` join the vocabulary after the
original tokens, and the embeddings grow to a multiple of 64. The converter fills the new rows with
random samples around the mean of the old rows; we use that mean itself. Only the `<image>`/`<pad>`/
padding rows differ from a llava-hf conversion, and inference never reads them for image positions.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from typing import Any, Callable, Iterator

import torch

from llavakit.config.base import PretrainedConfig
from llavakit.config.clip import CLIPVisionConfig
from llavakit.config.llama import LlamaConfig, MistralConfig
from llavakit.config.llava import default_vision_config
from llavakit.config.qwen2 import Qwen2Config
from llavakit.config.siglip import SiglipVisionConfig
from llavakit.loading import keymaps
from llavakit.loading.hub import read_json, resolve_file, resolve_optional
from llavakit.loading.load import checkpoint_files, _iter_tensors

ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaQwenForCausalLM")
ORIGINAL_MODEL_TYPES = ("llava_llama", "llava_mistral", "llava_qwen")
ORIGINAL_KEYS = ("mm_vision_tower", "mm_projector_type", "mm_hidden_size")
PROJECTOR_TYPES = ("mlp2x_gelu",)
NEXT_ASPECT, NEXT_MERGE = "anyres", "spatial_unpad"  # the only anyres mode transformers' LlavaNext computes
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}
# lmms-lab LLaVA-NeXT-Video: each frame's grid goes through a parameter-free "spatial_pool" resampler.
VIDEO_RESAMPLER, VIDEO_POOL_MODES = "spatial_pool", ("average", "max")
# lmms-lab LLaVA-OneVision: a Qwen2 decoder, "anyres_max_N" images, SigLIP with its last layer and head removed.
ONEVISION_ASPECT = re.compile(r"anyres_max_\d+")
SIGLIP_SO400M = "google/siglip-so400m-patch14-384"
# The ids transformers' converter gives <image> / <video> with a Qwen2 tokenizer (151646 tokens), inside Qwen2's
# already padded vocabulary; a decoder with a smaller vocabulary gets them appended after its rows instead.
QWEN_IMAGE_TOKEN = 151646
VIP_TOWER = "clip_4layers_336"  # ViP-LLaVA's name for CLIP-L/14-336 read at layers [-2, -5, -8, -11, 6]
VIP_LAYERS = [-2, -5, -8, -11, 6]
# Vision towers whose config we know, so a checkpoint that embeds the tower's weights needs no download.
KNOWN_TOWERS: dict[str, Callable[[], CLIPVisionConfig]] = {
    "openai/clip-vit-large-patch14-336": default_vision_config,
    VIP_TOWER: default_vision_config,
    "openai/clip-vit-large-patch14": lambda: CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                              projection_dim=768, image_size=224, patch_size=14,
                                                              num_hidden_layers=24, num_attention_heads=16),
    SIGLIP_SO400M: lambda: SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, patch_size=14,
                                              image_size=384, num_hidden_layers=27, num_attention_heads=16),
}
TOWER_REPOS = {VIP_TOWER: "openai/clip-vit-large-patch14-336"}
EMBEDDING_KEYS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
ADAPTER_PREFIX = "base_model.model."
LORA_EXTRAS = "non_lora_trainables.bin"


def is_original_config(data: dict[str, Any]) -> bool:
    """True for the config.json of an original LLaVA / ViP-LLaVA checkpoint (not a llava-hf conversion)."""
    if any(key in data for key in ORIGINAL_KEYS) or data.get("model_type") in ORIGINAL_MODEL_TYPES:
        return True
    return any(arch in ORIGINAL_ARCHITECTURES for arch in data.get("architectures") or [])


def family(data: dict[str, Any]) -> str:
    """'vipllava', 'llava_onevision' (Qwen2 + anyres_max), 'llava_next_video' (the spatial_pool resampler),
    'llava_next' (anyres) or 'llava'."""
    if data.get("mm_vision_tower") == VIP_TOWER:
        return "vipllava"
    aspect, merge = str(data.get("image_aspect_ratio", "")), str(data.get("mm_patch_merge_type", ""))
    if _is_qwen(data) or ONEVISION_ASPECT.fullmatch(aspect):
        return "llava_onevision"
    if data.get("mm_resampler_type") == VIDEO_RESAMPLER:
        return "llava_next_video"
    if aspect.startswith("anyres") or "unpad" in merge:
        return "llava_next"
    return "llava"


def padded_vocab(old_vocab: int, n_new: int = 2) -> int:
    """The converter's `resize_token_embeddings(old + n_new, pad_to_multiple_of=64)`."""
    return int(math.ceil((old_vocab + n_new) / 64) * 64)


def _is_qwen(data: dict[str, Any]) -> bool:
    return data.get("model_type") == "llava_qwen" or "LlavaQwenForCausalLM" in (data.get("architectures") or [])


# ---- config ------------------------------------------------------------------------------------
def text_config_dict(data: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """The decoder part of an original config.json (its top-level llama/mistral/qwen2 keys)."""
    is_mistral = data.get("model_type") == "llava_mistral" or "LlavaMistralForCausalLM" in (data.get("architectures")
                                                                                             or [])
    cls = Qwen2Config if _is_qwen(data) else MistralConfig if is_mistral else LlamaConfig
    names = {f.name for f in dataclasses.fields(cls)} | {"rope_theta", "rope_scaling"}
    text = {k: v for k, v in data.items() if k in names and k != "dtype"}
    text.update(model_type=cls.model_type, vocab_size=vocab_size)
    return text


def check_supported(data: dict[str, Any]) -> None:
    """ValueError naming the option for original configs llavakit cannot load (architecture, projector, ...)."""
    architectures = [a for a in data.get("architectures") or [] if re.fullmatch(r"Llava\w*ForCausalLM", a)]
    model_type = str(data.get("model_type", ""))
    unknown = [a for a in architectures if a not in ORIGINAL_ARCHITECTURES] or (
        [model_type] if model_type.startswith("llava_") and model_type not in ORIGINAL_MODEL_TYPES else [])
    if unknown:
        raise ValueError(f"original LLaVA checkpoint of type {unknown[0]!r}: llavakit reads "
                         f"{list(ORIGINAL_ARCHITECTURES)} (llama / mistral decoders)")
    projector = data.get("mm_projector_type", "linear")  # the original code's default
    if projector not in PROJECTOR_TYPES:
        raise ValueError(f"original LLaVA checkpoint with mm_projector_type={projector!r}: llavakit supports "
                         f"{list(PROJECTOR_TYPES)} (a Linear-GELU-Linear projector)")
    if data.get("mm_use_im_start_end") or data.get("mm_use_im_patch_token"):
        raise ValueError("original LLaVA checkpoints with mm_use_im_start_end / mm_use_im_patch_token (extra image "
                         "boundary tokens) are not supported")
    feature = data.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise ValueError(f"mm_vision_select_feature={feature!r} is not supported; expected one of "
                         f"{sorted(SELECT_FEATURES)}")
    kind = family(data)
    if kind == "llava_onevision":
        aspect, merge = str(data.get("image_aspect_ratio")), data.get("mm_patch_merge_type", "flat")
        if not ONEVISION_ASPECT.fullmatch(aspect) or "unpad" not in str(merge):
            raise ValueError(f"image_aspect_ratio={aspect!r} with mm_patch_merge_type={merge!r} is not supported; "
                             f"LLaVA-OneVision checkpoints need 'anyres_max_N' with {NEXT_MERGE!r}")
    if kind == "llava_next_video":
        mode = data.get("mm_spatial_pool_mode", "average")
        if mode not in VIDEO_POOL_MODES:
            raise ValueError(f"mm_spatial_pool_mode={mode!r} is not supported for original LLaVA-NeXT-Video "
                             f"checkpoints; expected one of {list(VIDEO_POOL_MODES)}")
    if kind in ("llava_next", "llava_next_video"):
        aspect, merge = data.get("image_aspect_ratio"), data.get("mm_patch_merge_type", "flat")
        if (aspect, merge) != (NEXT_ASPECT, NEXT_MERGE):
            raise ValueError(f"image_aspect_ratio={aspect!r} with mm_patch_merge_type={merge!r} is not supported; "
                             f"LLaVA-NeXT checkpoints need {NEXT_ASPECT!r} with {NEXT_MERGE!r} (as llava-v1.6 has)")


def written_pinpoints(value: Any, tower_size: int) -> list[list[int]]:
    """The original `image_grid_pinpoints` as a list of [width, height] pairs, in the order written.

    LLaVA-NeXT repos also write a string: grid multiples of the tower's image size, "(1x1),(1x2),(2x1)"
    or a range "(1x1),...,(3x3)", or a Python literal list.
    """
    pairs = value
    if isinstance(value, str):
        text = value.replace(" ", "")
        cell = r"\(\d+x\d+\)"
        if re.fullmatch(rf"{cell}(,{cell})*", text) or re.fullmatch(rf"{cell},\.\.\.,{cell}", text):
            cells = [(int(a), int(b)) for a, b in re.findall(r"\((\d+)x(\d+)\)", text)]
            if "..." in text:  # every grid from the first to the last
                (w0, h0), (w1, h1) = cells
                cells = [(w, h) for w in range(w0, w1 + 1) for h in range(h0, h1 + 1)]
            pairs = [[w * tower_size, h * tower_size] for w, h in cells]
        else:
            try:
                pairs = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                raise ValueError(f"cannot read image_grid_pinpoints={value!r}: expected a list of [width, height] "
                                 "pairs or grid multiples like '(1x1),(1x2),(2x1)' or '(1x1),...,(3x3)'") from None
    if not isinstance(pairs, (list, tuple)) or not pairs or any(
            not isinstance(p, (list, tuple)) or len(p) != 2 or not all(type(x) is int and x > 0 for x in p)
            for p in pairs):
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [width, height] pairs of positive ints, "
                         f"got {value!r}")
    return [[int(a), int(b)] for a, b in pairs]


def grid_pinpoints(value: Any, tower_size: int) -> list[list[int]]:
    """The original `image_grid_pinpoints` -> our [height, width] list that tiles as the original code does.

    The original reads each pair as (width, height) and keeps the first of tied candidates; every image up
    to the tower size ties on llava-v1.6's [[336, 672], [672, 336], ...]. Swapping each pair (and keeping
    the order) gives the same canvas for every image. transformers' converter copies the list unswapped
    into llava-hf configs, which read it as (height, width): those checkpoints pick the transposed canvas
    on ties (a 300x200 image gets 1464 image tokens there, 976 in the original).
    """
    return [[height, width] for width, height in written_pinpoints(value, tower_size)]


def tower_source(data: dict[str, Any], vision_tower: str | os.PathLike | None) -> str:
    """Where the CLIP tower comes from: the user's explicit folder/repo, else the Hub repo id config.json names.

    A local path written inside config.json (e.g. "/home/me/clip") is never followed: the user must say so.
    """
    if vision_tower is not None:
        return os.fspath(vision_tower)
    name = data.get("mm_vision_tower") or data.get("vision_tower")
    if not name:
        raise ValueError("the original LLaVA config.json names no vision tower (mm_vision_tower); pass "
                         "vision_tower=FOLDER_OR_REPO (e.g. 'openai/clip-vit-large-patch14-336')")
    name = TOWER_REPOS.get(name, name)
    local_looking = name.startswith((".", "/", "~")) or os.path.isabs(name) or name.count("/") != 1
    if local_looking or os.path.exists(name):
        raise ValueError(f"config.json names the vision tower {name!r}, which is not a Hub repo id (owner/name); "
                         "llavakit does not read local paths found inside a checkpoint. Pass vision_tower=PATH "
                         "to use that folder")
    return name


def _tower_hub(hub: dict[str, Any]) -> dict[str, Any]:
    """Hub options that also apply to the tower repo (not the revision or subfolder of the LLaVA repo)."""
    return {k: v for k, v in hub.items() if k not in ("revision", "subfolder")}


def vision_config_for(source: str, embedded: bool, explicit: bool, hub: dict[str, Any]
                      ) -> CLIPVisionConfig | SiglipVisionConfig:
    """The tower's config: built in for well-known towers whose weights the checkpoint carries, else its
    config.json (a full CLIP / SigLIP config or a vision-only one)."""
    if embedded and not explicit and source in KNOWN_TOWERS:
        return KNOWN_TOWERS[source]()
    data = read_json(resolve_file(source, "config.json", **_tower_hub(hub)))
    if data.get("model_type") in ("siglip", "siglip_vision_model"):
        if data.get("model_type") == "siglip":
            data = dict(data.get("vision_config") or {})
        return SiglipVisionConfig.from_dict({**data, "model_type": "siglip_vision_model"})
    if data.get("model_type") not in ("clip", "clip_vision_model", None):
        raise ValueError(f"vision tower {source} is a {data.get('model_type')!r} model; original LLaVA checkpoints "
                         "use a CLIP vision tower")
    if data.get("model_type") == "clip":
        data = dict(data.get("vision_config") or {}, model_type="clip_vision_model")
    return CLIPVisionConfig.from_dict({**data, "model_type": "clip_vision_model"})


def build_config(data: dict[str, Any], vision_config: CLIPVisionConfig, old_vocab: int) -> PretrainedConfig:
    """Our LlavaConfig / VipLlavaConfig / LlavaNextConfig for an original config.json."""
    check_supported(data)
    kind = family(data)
    mm_hidden = data.get("mm_hidden_size")
    expected_hidden = vision_config.hidden_size * (len(VIP_LAYERS) if kind == "vipllava" else 1)
    if mm_hidden is not None and mm_hidden != expected_hidden:
        raise ValueError(f"config.json has mm_hidden_size={mm_hidden}, but the vision tower gives {expected_hidden} "
                         f"features (hidden_size {vision_config.hidden_size}); is vision_tower the right model?")
    if kind == "llava_onevision":
        return onevision_config(data, vision_config, old_vocab)
    if kind == "llava_next_video":
        return next_video_config(data, vision_config, old_vocab)
    common = dict(vision_config=vision_config.to_dict(), text_config=text_config_dict(data, padded_vocab(old_vocab)),
                  image_token_index=old_vocab, pad_token_id=old_vocab + 1, projector_hidden_act="gelu",
                  image_seq_length=vision_config.num_patches)
    if data.get("torch_dtype") is not None:
        common["dtype"] = data["torch_dtype"]
    if kind == "vipllava":
        from llavakit.config.vipllava import VipLlavaConfig

        return VipLlavaConfig(vision_feature_layers=list(VIP_LAYERS), **common)
    llava = dict(vision_feature_layer=data.get("mm_vision_select_layer", -2),
                 vision_feature_select_strategy=SELECT_FEATURES[data.get("mm_vision_select_feature", "patch")],
                 **common)
    if kind == "llava_next":
        try:
            from llavakit.config.llava_next import LlavaNextConfig
        except ImportError:
            raise ValueError("this is an original LLaVA-NeXT (anyres) checkpoint, which this llavakit version cannot "
                             "load yet") from None
        if data.get("image_grid_pinpoints") is not None:
            llava["image_grid_pinpoints"] = grid_pinpoints(data["image_grid_pinpoints"], vision_config.image_size)
        return LlavaNextConfig(**llava)
    from llavakit.config.llava import LlavaConfig

    return LlavaConfig(**llava)


def onevision_tower(vision_config: SiglipVisionConfig) -> SiglipVisionConfig:
    """The SigLIP tower as OneVision runs it: its last layer and its pooling head removed (hidden_states[-1] of
    the shortened tower is what the original reads)."""
    if not isinstance(vision_config, SiglipVisionConfig):
        raise ValueError(f"original LLaVA-OneVision checkpoints use a SigLIP vision tower, got "
                         f"{type(vision_config).__name__}; pass vision_tower= a SigLIP folder or repo id")
    data = dict(vision_config.to_dict(), num_hidden_layers=vision_config.num_hidden_layers - 1,
                vision_use_head=False)
    return SiglipVisionConfig.from_dict(data)


def onevision_config(data: dict[str, Any], vision_config: PretrainedConfig, old_vocab: int) -> PretrainedConfig:
    """LlavaOnevisionConfig for an lmms-lab llava_qwen config.json: <image> and <video> follow the tokenizer
    (151646 / 151647 inside a Qwen2 vocabulary), the embeddings grow by two rows padded to 64, as the converter
    does."""
    from llavakit.config.llava_onevision import LlavaOnevisionConfig

    tower = onevision_tower(vision_config)
    image = QWEN_IMAGE_TOKEN if old_vocab > QWEN_IMAGE_TOKEN + 1 else old_vocab
    config = dict(vision_config=tower.to_dict(), text_config=text_config_dict(data, padded_vocab(old_vocab)),
                  image_token_index=image, video_token_index=image + 1, vision_feature_layer=-1,
                  vision_feature_select_strategy="full", vision_aspect_ratio=data["image_aspect_ratio"],
                  tie_word_embeddings=bool(data.get("tie_word_embeddings", False)))
    if data.get("image_grid_pinpoints") is not None:
        config["image_grid_pinpoints"] = grid_pinpoints(data["image_grid_pinpoints"], tower.image_size)
    if data.get("torch_dtype") is not None:
        config["dtype"] = data["torch_dtype"]
    return LlavaOnevisionConfig(**config)


def next_video_config(data: dict[str, Any], vision_config: PretrainedConfig, old_vocab: int) -> PretrainedConfig:
    """LlavaNextVideoConfig for an lmms-lab LLaVA-NeXT-Video config.json: <video>, <image> and <pad> join the
    vocabulary in that order (the converter's ids), the embeddings grow by three rows padded to 64."""
    from llavakit.config.llava_next_video import LlavaNextVideoConfig

    config = dict(vision_config=vision_config.to_dict(),
                  text_config=text_config_dict(data, padded_vocab(old_vocab, n_new=3)),
                  video_token_index=old_vocab, image_token_index=old_vocab + 1, pad_token_id=old_vocab + 2,
                  vision_feature_layer=data.get("mm_vision_select_layer", -2),
                  vision_feature_select_strategy=SELECT_FEATURES[data.get("mm_vision_select_feature", "patch")],
                  spatial_pool_mode=data.get("mm_spatial_pool_mode", "average"),
                  spatial_pool_stride=data.get("mm_spatial_pool_stride", 2),
                  image_seq_length=vision_config.num_patches)
    if data.get("image_grid_pinpoints") is not None:
        config["image_grid_pinpoints"] = grid_pinpoints(data["image_grid_pinpoints"], vision_config.image_size)
    if data.get("torch_dtype") is not None:
        config["dtype"] = data["torch_dtype"]
    return LlavaNextVideoConfig(**config)


def removed_tower_part(hub_key: str, config: PretrainedConfig) -> bool:
    """True for tower tensors OneVision's original removed (the last layer, the pooling head), which a separately
    stored SigLIP checkpoint still carries."""
    if getattr(config, "model_type", None) != "llava_onevision":
        return False
    prefix = "vision_tower.vision_model."
    if hub_key.startswith(prefix + "head."):
        return True
    layer = re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", hub_key)
    return layer is not None and int(layer.group(1)) >= config.vision_config.num_hidden_layers


# ---- model class ---------------------------------------------------------------------------------
def _model_classes(kind: str) -> tuple[type, type]:
    """(generation class, base class) of a family."""
    if kind == "llava_onevision":
        from llavakit.models.llava_onevision import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel

        return LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
    if kind == "llava_next_video":
        from llavakit.models.llava_next_video import LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel

        return LlavaNextVideoForConditionalGeneration, LlavaNextVideoModel
    if kind == "vipllava":
        from llavakit.models.vipllava import VipLlavaForConditionalGeneration, VipLlavaModel

        return VipLlavaForConditionalGeneration, VipLlavaModel
    if kind == "llava_next":
        from llavakit.models.llava_next import LlavaNextForConditionalGeneration, LlavaNextModel

        return LlavaNextForConditionalGeneration, LlavaNextModel
    from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel

    return LlavaForConditionalGeneration, LlavaModel


def model_class_for(requested: type, kind: str, via_auto: bool) -> type:
    """The class to build. AutoModel* calls reach us with the LLaVA class for any original config (all
    say model_type "llava"); then the family's class of the same role is used."""
    generation, base = _model_classes(kind)
    is_base = requested.__name__.endswith("Model") and not requested.__name__.endswith("ForConditionalGeneration")
    wanted = base if is_base else generation
    if requested is wanted or issubclass(requested, wanted):
        return requested
    if via_auto and requested.__name__ in ("LlavaForConditionalGeneration", "LlavaModel"):
        return wanted
    raise ValueError(f"{requested.__name__} cannot load this original {kind} checkpoint; use {wanted.__name__} "
                     f"or AutoModelForImageTextToText")


# ---- tensors -------------------------------------------------------------------------------------
def rename_original(key: str) -> str | None:
    """An original tensor name -> the Hub layout; None for tensors that are dropped; ValueError if unknown."""
    if any(part in key for part in keymaps.ORIGINAL_DROPPED):
        return None
    for old, new in keymaps.ORIGINAL_TO_HUB:
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"unknown tensor {key!r} in the original LLaVA checkpoint (expected model.layers.*, "
                     "model.embed_tokens, model.norm, model.mm_projector.{0,2}, model.vision_tower.*, lm_head)")


def rename_tower(key: str) -> str | None:
    """A separate CLIP checkpoint's tensor name -> the Hub layout; None for its text half."""
    if key.startswith(keymaps.CLIP_TOWER_DROPPED):
        return None
    return keymaps.rename(key, keymaps.CLIP_TOWER_TO_HUB)


def grow_embeddings(tensors: Iterator[tuple[str, torch.Tensor]], new_vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Pad embed_tokens / lm_head to `new_vocab` rows with the mean of the embedding's old rows.

    The converter draws the new rows of both from one distribution centred on the embedding mean; the
    mean is that distribution's expected value (the head's rows come from the embedding too).
    """
    held: dict[str, torch.Tensor] = {}
    for key, tensor in tensors:
        if key in EMBEDDING_KEYS and tensor.shape[0] < new_vocab:
            held[key] = tensor
            continue
        yield key, tensor
    embed = held.get(EMBEDDING_KEYS[0])
    for key, tensor in held.items():
        source = embed if embed is not None else tensor
        mean = source.float().mean(dim=0, keepdim=True).to(tensor.dtype)  # (1, H)
        rows = new_vocab - tensor.shape[0]
        yield key, torch.cat([tensor, mean.expand(rows, -1)], dim=0)  # (new_vocab, H)


# ---- LoRA folders --------------------------------------------------------------------------------
def lora_scale(adapter_config: dict[str, Any]) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA), as peft scales a merged LoRA delta."""
    r, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise ValueError(f"adapter_config.json needs a positive int r and a number lora_alpha, got r={r!r}, "
                         f"lora_alpha={alpha!r}")
    if adapter_config.get("use_dora") or adapter_config.get("fan_in_fan_out"):
        raise ValueError("DoRA and fan_in_fan_out LoRA adapters are not supported")
    return alpha / math.sqrt(r) if adapter_config.get("use_rslora") else alpha / r


def merge_lora(tensors: Iterator[tuple[str, torch.Tensor]], adapter: dict[str, torch.Tensor],
               scale: float) -> Iterator[tuple[str, torch.Tensor]]:
    """W + (B @ A) * scale for every base weight the adapter has a lora_A / lora_B pair for.

    `adapter` keys are the original names without peft's `base_model.model.` prefix.
    """
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0]
                pairs.setdefault(module + ".weight", {})[part] = tensor
    used = set()
    for key, tensor in tensors:
        pair = pairs.get(key)
        if pair is not None:
            if set(pair) != {"lora_A", "lora_B"}:
                raise ValueError(f"the LoRA adapter has only {sorted(pair)} for {key}")
            a, b = pair["lora_A"].float(), pair["lora_B"].float()  # (r, in), (out, r)
            delta = (b @ a) * scale  # (out, in)
            if delta.shape != tensor.shape:
                raise ValueError(f"LoRA delta for {key} has shape {tuple(delta.shape)}, the weight {tuple(tensor.shape)}")
            tensor = (tensor.float() + delta).to(tensor.dtype)
            used.add(key)
        yield key, tensor
    unused = sorted(set(pairs) - used)
    if unused:
        raise ValueError(f"the LoRA adapter targets weights the base model does not have: {unused[:5]}")


def _strip_adapter_prefix(key: str) -> str:
    key = key.removeprefix(ADAPTER_PREFIX)
    return key.replace(".default.", ".")  # in-memory peft names, as some scripts save them


def _read_state(path: str) -> dict[str, torch.Tensor]:
    return dict(_iter_tensors(path))


def lora_base(path_or_repo_id: str | os.PathLike, hub: dict[str, Any],
              model_base: str | os.PathLike | None) -> str | os.PathLike:
    """The base model of a -lora folder: the user's model_base, else the Hub id adapter_config.json names."""
    if model_base is not None:
        return model_base
    base = read_json(resolve_file(path_or_repo_id, "adapter_config.json", **hub)).get("base_model_name_or_path")
    if base is None:
        raise ValueError("this is a LoRA checkpoint; pass model_base=FOLDER_OR_REPO (the base language model)")
    return tower_source({"mm_vision_tower": base}, None)  # a Hub id only, never a path from a file


def _lora_parts(path_or_repo_id: str | os.PathLike, hub: dict[str, Any], use_safetensors: bool | None,
                model_base: str | os.PathLike | None) -> tuple[list[str], dict[str, torch.Tensor], float, list[str]]:
    """(base model files, adapter tensors, scale, extra trainable files) of a -lora folder."""
    adapter_config = read_json(resolve_file(path_or_repo_id, "adapter_config.json", **hub))
    scale = lora_scale(adapter_config)
    base = lora_base(path_or_repo_id, hub, model_base)
    adapter_file = resolve_optional(path_or_repo_id, "adapter_model.safetensors", **hub)
    extras = []
    if adapter_file is None or resolve_optional(path_or_repo_id, LORA_EXTRAS, **hub) is not None:
        if use_safetensors is not False:
            raise ValueError("this LoRA checkpoint stores weights as pickle files (adapter_model.bin / "
                             f"{LORA_EXTRAS}). Unpickling can run code, so llavakit reads them only if you ask: "
                             "from_pretrained(..., use_safetensors=False)")
        adapter_file = adapter_file or resolve_file(path_or_repo_id, "adapter_model.bin", **hub)
        extra = resolve_optional(path_or_repo_id, LORA_EXTRAS, **hub)
        extras = [extra] if extra is not None else []
    adapter = {_strip_adapter_prefix(k): v for k, v in _read_state(adapter_file).items()}
    base_files = checkpoint_files(base, use_safetensors, _tower_hub(hub))
    return base_files, adapter, scale, extras


# ---- the whole plan -------------------------------------------------------------------------------
@dataclasses.dataclass
class OriginalCheckpoint:
    """What load.py needs: the class and config to build, and the converted tensors (Hub layout) to fill it."""

    model_class: type
    config: PretrainedConfig
    where: str
    tensors: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    tower_source: str


def _count_vocab(files: list[str]) -> int | None:
    for path in files:
        for key, tensor in _iter_tensors(path):
            if key == "model.embed_tokens.weight":
                return int(tensor.shape[0])
    return None


def prepare(requested: type, path_or_repo_id: str | os.PathLike, data: dict[str, Any], *, hub: dict[str, Any],
            use_safetensors: bool | None, vision_tower: str | os.PathLike | None = None,
            model_base: str | os.PathLike | None = None, via_auto: bool = False) -> OriginalCheckpoint:
    """Plan the load of an original checkpoint: config, class, and a generator of converted tensors."""
    check_supported(data)
    is_lora = resolve_optional(path_or_repo_id, "adapter_config.json", **hub) is not None
    if is_lora:
        files, adapter, scale, extras = _lora_parts(path_or_repo_id, hub, use_safetensors, model_base)
    else:
        files, adapter, scale, extras = checkpoint_files(path_or_repo_id, use_safetensors, hub), {}, 0.0, []
    extra_state = {_strip_adapter_prefix(k): v for path in extras for k, v in _read_state(path).items()}
    own_keys = set(extra_state)
    for path in files:  # names only: safetensors and mmap'd pickles read no tensor data here
        own_keys.update(key for key, _ in _iter_tensors(path))
    tower_prefix = keymaps.ORIGINAL_TO_HUB[0][0]
    embedded = any(key.startswith(tower_prefix) for key in own_keys)
    source = tower_source(data, vision_tower)
    vision_config = vision_config_for(source, embedded, vision_tower is not None, hub)
    old_vocab = _count_vocab(files) or data.get("vocab_size")
    if not isinstance(old_vocab, int):
        raise ValueError("cannot tell the original vocabulary size: no model.embed_tokens.weight and no vocab_size")
    config = build_config(data, vision_config, old_vocab)
    model_class = model_class_for(requested, family(data), via_auto)
    tower_files = [] if embedded else checkpoint_files(source, use_safetensors, _tower_hub(hub))

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        own = ((k, t) for path in files for k, t in _iter_tensors(path))
        own = merge_lora(own, adapter, scale) if is_lora else own
        own = ((k, t) for items in (own, iter(extra_state.items())) for k, t in items)
        renamed = ((name, t) for k, t in own if (name := rename_original(k)) is not None)
        tower = ((name, t) for path in tower_files for k, t in _iter_tensors(path)
                 if (name := rename_tower(k)) is not None)
        stream = ((k, t) for items in (renamed, tower) for k, t in items if not removed_tower_part(k, config))
        return grow_embeddings(stream, config.text_config.vocab_size)

    where = f"{os.fspath(path_or_repo_id)} (original LLaVA layout" + ("" if embedded else f", vision tower {source}") \
        + (", LoRA merged" if is_lora else "") + ")"
    return OriginalCheckpoint(model_class, config, where, tensors, source)
