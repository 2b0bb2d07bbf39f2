"""Processors for original LLaVA checkpoints (liuhaotian, mucai, LLaVA-NeXT repo layouts), built from config.json.

The original code (`llava.model.builder.load_pretrained_model` + `llava.mm_utils`) does four things a
llava-hf processor does differently, and these processors do them its way:
- the tokenizer is the SentencePiece tokenizer.model read by the slow LlamaTokenizer (with the
  tokenizer_config.json `legacy` flag), except on the mistral path, which uses the fast tokenizer
  (always legacy);
- `tokenizer_image_token` tokenizes the text between `<image>` placeholders one chunk at a time, so each
  chunk starts a new word ("▁" after the image when legacy is False);
- images come from the CLIP processor of the tower repo (`mm_vision_tower`), padded to a square for
  image_aspect_ratio "pad", or tiled on the (width, height) `image_grid_pinpoints` for "anyres";
- the prompt is the conv mode's (`conversations.py`), chosen from the model name as `run_llava` does.
"""

from __future__ import annotations

import os
from typing import Any

from llavakit.loading import original
from llavakit.loading.hub import read_json, resolve_file
from llavakit.processing.conversations import conv_mode_for
from llavakit.processing.image import CLIPImageProcessor
from llavakit.processing.image_llava import LlavaImageProcessor
from llavakit.processing.image_next import LlavaNextImageProcessor
from llavakit.processing.llava import LlavaProcessor
from llavakit.processing.llava_next import LlavaNextProcessor
from llavakit.processing.sentencepiece import SPIECE_FILE, slow_prefix
from llavakit.processing.templates import TEMPLATES
from llavakit.processing.tokenizer import TOKENIZER_FILE, PreTrainedTokenizerFast, load_tokenizer_kwargs

IMAGE_TOKEN = "<image>"
# Model types of the original repos (llava-torch: llava / llava_llama / llava_mistral / llava_mpt; the
# LLaVA-NeXT repo adds llava_qwen, llava_mixtral, llava_gemma, ...) and the template for those the name
# does not decide.
TYPE_TEMPLATES = {"llava_qwen": "qwen", "llava_qwen_moe": "qwen"}
_UNSUPPORTED_CALL_KWARGS = ("truncation", "return_offsets_mapping", "stride", "pad_to_multiple_of",
                            "return_token_type_ids", "return_special_tokens_mask", "return_length")


def model_name(path_or_repo_id: str | os.PathLike) -> str:
    """`llava.mm_utils.get_model_name_from_path`: the last path part (with its parent for checkpoint-N)."""
    parts = os.fspath(path_or_repo_id).strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


def uses_fast_tokenizer(name: str, is_lora: bool) -> bool:
    """load_pretrained_model reads the tokenizer with use_fast left on only for 'mistral' model names (not for
    -lora folders, whose base tokenizer it reads slow); 4.37's fast conversion always behaves as legacy=True."""
    return "mistral" in name.lower() and not is_lora


class OriginalTokenization:
    """`tokenizer_image_token`'s ids: the text around each `<image>` tokenized on its own, BOS only once."""

    legacy: bool = True  # False: a chunk starting with a space still gets its own "▁" (slow legacy=False)
    saved_class = "LlavaProcessor"

    def encode_prompt(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One prompt -> ids, `<image>` (already expanded to its feature count) -> the image token id."""
        ids: list[int] = []
        for index, chunk in enumerate(text.split(self.image_token)):
            if index:
                ids.append(self.image_token_id)
                if not chunk:  # the original tokenizes "" to [BOS] and drops that BOS
                    continue
            encoded = self.tokenizer(slow_prefix(chunk, self.legacy), add_special_tokens=add_special_tokens and
                                     index == 0)
            ids.extend(encoded["input_ids"])
        return ids

    def _tokenize(self, texts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The original's ids for each prompt, padded as asked (the original code neither pads nor truncates)."""
        used = sorted(k for k in _UNSUPPORTED_CALL_KWARGS if kwargs.get(k))
        if used:
            raise ValueError(f"{used} {'is' if len(used) == 1 else 'are'} not supported by the processor of an "
                             "original LLaVA checkpoint, which tokenizes as the original code "
                             "(tokenizer_image_token) does; convert the checkpoint (`llavakit convert`) for "
                             "llava-hf processing")
        rows = [self.encode_prompt(text, kwargs.get("add_special_tokens", True)) for text in texts]
        padding, max_length = kwargs.get("padding", False), kwargs.get("max_length")
        if padding in (True, "longest"):
            width = max(len(row) for row in rows)
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            width = max(max_length, max(len(row) for row in rows))
        elif padding in (False, None, "do_not_pad"):
            width = None
        else:
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if width is not None and len({len(row) for row in rows} | {width}) > 1 and self.tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token to pad a batch")
        side = kwargs.get("padding_side") or self.tokenizer.padding_side
        ids, masks = [], []
        for row in rows:
            fill = 0 if width is None else width - len(row)
            pad, ones = [self.tokenizer.pad_token_id] * fill, [1] * len(row)
            ids.append(pad + row if side == "left" else row + pad)
            masks.append([0] * fill + ones if side == "left" else ones + [0] * fill)
        out: dict[str, Any] = {"input_ids": ids}
        if kwargs.get("return_attention_mask", True) is not False:
            out["attention_mask"] = masks
        return out


    def to_dict(self) -> dict[str, Any]:
        """save_pretrained writes the llava-hf processor (as `llavakit convert` does): the saved folder
        tokenizes the llava-hf way, like the model saved next to it in the llava-hf layout."""
        out = super().to_dict()
        out["processor_class"] = self.saved_class
        return out


class OriginalLlavaProcessor(OriginalTokenization, LlavaProcessor):
    """LlavaProcessor with the original code's tokenization (LLaVA-1.5, ViP-LLaVA)."""


class OriginalLlavaNextProcessor(OriginalTokenization, LlavaNextProcessor):
    """LlavaNextProcessor with the original code's tokenization (LLaVA-1.6 anyres)."""

    saved_class = "LlavaNextProcessor"


# ---- building from config.json ---------------------------------------------------------------------------
def original_tokenizer(path_or_repo_id: str | os.PathLike, hub: dict[str, Any], *, fast_path: bool,
                       image_token_index: int | None) -> tuple[PreTrainedTokenizerFast, bool]:
    """(tokenizer with `<image>` at the model's image index, legacy flag) from tokenizer.model or tokenizer.json."""
    has_spiece = resolve_file(path_or_repo_id, SPIECE_FILE, required=False, **hub) is not None
    has_json = resolve_file(path_or_repo_id, TOKENIZER_FILE, required=False, **hub) is not None
    if not has_spiece and not has_json:
        raise ValueError(f"{os.fspath(path_or_repo_id)} has no tokenizer ({SPIECE_FILE} or {TOKENIZER_FILE}); for a "
                         "LoRA checkpoint pass model_base=FOLDER_OR_REPO (the base model holds the tokenizer)")
    kwargs = load_tokenizer_kwargs(path_or_repo_id, hub, {"legacy": True} if fast_path else {})
    legacy = bool(kwargs.get("legacy", True)) if not has_json else True
    tokenizer = PreTrainedTokenizerFast(**kwargs)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    got = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_index is not None and got != image_token_index:
        raise ValueError(f"the tokenizer of {os.fspath(path_or_repo_id)} puts {IMAGE_TOKEN} at id {got}, but the model "
                         f"reads image features at id {image_token_index} (the original vocabulary size); is this "
                         "the checkpoint's own tokenizer?")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # the original repos pad with <unk>
    tokenizer.padding_side = "left"  # batched generation needs left padding
    return tokenizer, legacy


def tower_image_config(data: dict[str, Any], hub: dict[str, Any], vision_tower: str | os.PathLike | None,
                       image_size: int) -> dict[str, Any]:
    """The CLIP preprocessing settings of the tower repo (CLIPImageProcessor.from_pretrained(mm_vision_tower) in
    the original); for a well-known OpenAI tower without a local copy, its published settings."""
    source = original.tower_source(data, vision_tower)
    tower_hub = {k: v for k, v in hub.items() if k not in ("revision", "subfolder")}
    try:
        path = resolve_file(source, "preprocessor_config.json", required=False, **tower_hub)
    except (OSError, ValueError):
        path = None
    if path is not None:
        return read_json(path)
    if source in original.KNOWN_TOWERS:  # OpenAI CLIP: resize the shortest edge, center crop, CLIP mean / std
        return {"size": {"shortest_edge": image_size}, "crop_size": {"height": image_size, "width": image_size}}
    raise ValueError(f"cannot find the image preprocessing of the vision tower {source} (its "
                     "preprocessor_config.json); pass vision_tower=FOLDER_OR_REPO holding it")


def build_processor(path_or_repo_id: str | os.PathLike, data: dict[str, Any], *, hub: dict[str, Any],
                    vision_tower: str | os.PathLike | None = None, model_base: str | os.PathLike | None = None,
                    chat_template: str | None = None) -> LlavaProcessor:
    """The processor of an original checkpoint: its tokenizer, its tower's CLIP settings, its conv mode.

    Only what changes the processing is checked here; loading the model checks the rest.
    """
    if data.get("mm_use_im_start_end") or data.get("mm_use_im_patch_token"):
        raise ValueError("original LLaVA checkpoints with mm_use_im_start_end / mm_use_im_patch_token (extra image "
                         "boundary tokens) are not supported")
    aspect = data.get("image_aspect_ratio")
    if aspect not in (None, "square", "pad", "anyres"):
        raise ValueError(f"image_aspect_ratio={aspect!r} is not supported by the processor of original LLaVA "
                         "checkpoints; supported: 'square', 'pad', 'anyres'")
    kind = original.family(data)
    source = original.tower_source(data, vision_tower)
    vision = original.vision_config_for(source, True, vision_tower is not None, hub)
    name = model_name(path_or_repo_id)
    is_lora = resolve_file(path_or_repo_id, "adapter_config.json", required=False, **hub) is not None
    # a -lora folder ships no tokenizer: the original reads the base model's
    tokenizer_source = original.lora_base(path_or_repo_id, hub, model_base) if is_lora else path_or_repo_id
    # the model's image features go to the first id past the original vocabulary (config.json's vocab_size);
    # Qwen decoders (llava_qwen) carry more embedding rows than tokens, so `<image>` follows the tokenizer's
    vocab = data.get("vocab_size") if data.get("model_type") not in TYPE_TEMPLATES else None
    tokenizer, legacy = original_tokenizer(tokenizer_source, hub, fast_path=uses_fast_tokenizer(name, is_lora),
                                           image_token_index=vocab if isinstance(vocab, int) else None)

    image_config = tower_image_config(data, hub, vision_tower, vision.image_size)
    image_config = {k: v for k, v in image_config.items() if k not in ("image_processor_type",
                                                                        "feature_extractor_type", "processor_class")}
    if kind == "llava_next":
        if data.get("image_grid_pinpoints") is None:
            raise ValueError("the original anyres config.json has no image_grid_pinpoints")
        image_processor = LlavaNextImageProcessor(**{
            **image_config, "image_grid_pinpoints": original.grid_pinpoints(data["image_grid_pinpoints"],
                                                                            vision.image_size)})
        processor_class: type = OriginalLlavaNextProcessor
    elif aspect == "pad":
        image_processor = LlavaImageProcessor(**image_config, do_pad=True)
        processor_class = OriginalLlavaProcessor
    else:  # "square" or unset: the CLIP processor as is
        image_processor = CLIPImageProcessor(**image_config)
        processor_class = OriginalLlavaProcessor

    if chat_template is None:
        if kind == "vipllava":
            chat_template = "vip"
        else:
            chat_template = TYPE_TEMPLATES.get(str(data.get("model_type")), conv_mode_for(name))
    template = TEMPLATES.get(chat_template, chat_template)
    strategy = original.SELECT_FEATURES[data.get("mm_vision_select_feature", "patch")]
    processor = processor_class(image_processor, tokenizer, patch_size=vision.patch_size,
                                vision_feature_select_strategy=strategy, num_additional_image_tokens=1,
                                chat_template=template, image_token=IMAGE_TOKEN)
    processor.legacy = legacy
    processor.name_or_path = os.fspath(path_or_repo_id)
    return processor
