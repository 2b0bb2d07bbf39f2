"""`llavakit convert SRC DST`: an original LLaVA / ViP-LLaVA / LLaVA-NeXT / lmms-lab LLaVA-OneVision /
LLaVA-NeXT-Video checkpoint -> the llava-hf layout.

DST holds the model (save_pretrained), the tokenizer with `<image>` and `<pad>` (and `<video>`) added as the
converters add them, an image processor that pads to a square when the original did (image_aspect_ratio "pad")
or llava-hf's anyres one for NeXT / OneVision, a video processor for the video families, and the family's chat
template. transformers and llavakit both load DST.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an original LLaVA checkpoint to the llava-hf layout",
                       description="Convert an original (liuhaotian / mucai / lmms-lab) LLaVA, ViP-LLaVA, "
                                   "LLaVA-NeXT, LLaVA-OneVision or LLaVA-NeXT-Video checkpoint to the llava-hf "
                                   "layout.")
    p.add_argument("src", help="original checkpoint folder or Hub repo id")
    p.add_argument("dst", help="output folder")
    p.add_argument("--vision-tower", default=None,
                   help="CLIP tower folder or Hub repo id (default: the repo id the checkpoint's config names)")
    p.add_argument("--tokenizer", default=None, help="folder or repo id with tokenizer.json (default: SRC)")
    p.add_argument("--model-base", default=None, help="base language model of a -lora checkpoint")
    p.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16 or float16")
    p.add_argument("--chat-template", default=None, help="built-in template name (default: by model family)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read pytorch_model.bin / non_lora_trainables.bin (unpickling can run code)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    convert(args.src, args.dst, vision_tower=args.vision_tower, tokenizer=args.tokenizer, model_base=args.model_base,
            dtype=args.dtype, chat_template=args.chat_template, allow_pickle=args.allow_pickle)
    print(f"wrote {args.dst}", file=sys.stderr)
    return 0


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, vision_tower: str | None = None,
            tokenizer: str | None = None, model_base: str | None = None, dtype: Any = "auto",
            chat_template: str | None = None, allow_pickle: bool = False) -> None:
    """Write `src` (original layout) to `dst` in the llava-hf layout: model, processor, chat template.

    Everything is written to a temporary folder next to `dst`, renamed to `dst` only when complete: a failed
    or interrupted conversion leaves no half-written checkpoint behind."""
    final = Path(dst)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ValueError(f"{final} already exists and is not empty; convert into a new folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        _convert(src, staging, vision_tower=vision_tower, tokenizer=tokenizer, model_base=model_base, dtype=dtype,
                 chat_template=chat_template, allow_pickle=allow_pickle)
        os.replace(staging, final)  # atomic on one filesystem; replaces an empty dst folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _convert(src: str | os.PathLike, dst: Path, *, vision_tower: str | None, tokenizer: str | None,
             model_base: str | None, dtype: Any, chat_template: str | None, allow_pickle: bool) -> None:
    from llavakit.loading import original
    from llavakit.loading.hub import read_json, resolve_file

    data = read_json(resolve_file(src, "config.json"))
    if not original.is_original_config(data):
        raise ValueError(f"{os.fspath(src)} is not an original LLaVA checkpoint (its config.json has no mm_* keys); "
                         "llava-hf checkpoints need no conversion")
    kind = original.family(data)
    model_class = original._model_classes(kind)[0]
    options: dict[str, Any] = {"dtype": dtype, "vision_tower": vision_tower, "model_base": model_base}
    if allow_pickle:
        options["use_safetensors"] = False
    model = model_class.from_pretrained(src, **options)
    if hasattr(model.config, "image_grid_pinpoints") and data.get("image_grid_pinpoints") is not None:
        # llava-hf configs carry the list as written (read as height, width), as transformers' converter
        # writes it; loaded directly, the original checkpoint tiles as the original code (see original.py)
        model.config.image_grid_pinpoints = original.written_pinpoints(data["image_grid_pinpoints"],
                                                                       model.config.vision_config.image_size)
    model.save_pretrained(dst)

    if tokenizer is None and resolve_file(src, "adapter_config.json", required=False) is not None:
        tokenizer = original.lora_base(src, {}, model_base)  # a LoRA folder has none: the base's, as the original
    processor = build_processor(model.config, data, src, tokenizer=tokenizer, vision_tower=vision_tower,
                                chat_template=chat_template, kind=kind)
    processor.save_pretrained(dst)


def build_processor(config: Any, data: dict[str, Any], src: str | os.PathLike, *, tokenizer: str | None,
                    vision_tower: str | None, chat_template: str | None, kind: str) -> Any:
    """A LlavaProcessor (LlavaNextProcessor for anyres) for the converted model: tokens, image preprocessing
    and template of the original. NeXT gets llava-hf's anyres preprocessing, as transformers' converter writes."""
    from llavakit.processing.templates import TEMPLATES, default_template_name

    family_name = {"vipllava": "vipllava", "llava_onevision": "llava_onevision"}.get(kind, data.get("model_type"))
    name = chat_template or default_template_name(family_name, f"{os.fspath(src)} {data.get('_name_or_path', '')}")
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; built-in templates: {sorted(TEMPLATES)}")
    if kind in ("llava_onevision", "llava_next_video"):
        return _video_processor(config, tokenizer or src, TEMPLATES[name], kind)
    tok = _tokenizer_with_image_and_pad(tokenizer or src, config)
    vision = config.vision_config
    sizes = dict(size={"shortest_edge": vision.image_size},
                 crop_size={"height": vision.image_size, "width": vision.image_size})
    if kind == "llava_next":
        from llavakit.processing.image_next import LlavaNextImageProcessor
        from llavakit.processing.llava_next import LlavaNextProcessor as processor_class

        image_processor = LlavaNextImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints, **sizes)
    else:
        from llavakit.processing.image_llava import LlavaImageProcessor
        from llavakit.processing.llava import LlavaProcessor as processor_class

        image_processor = LlavaImageProcessor(do_pad=data.get("image_aspect_ratio") == "pad", **sizes)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    return processor_class(image_processor, tok, patch_size=vision.patch_size, vision_feature_select_strategy=strategy,
                          num_additional_image_tokens=1, chat_template=TEMPLATES[name])


def _video_processor(config: Any, tokenizer: str | os.PathLike, template: str, kind: str) -> Any:
    """The llava-hf processor of a converted OneVision / NeXT-Video model: image, video and token settings
    follow the model (tower size, pinpoints, aspect ratio), as transformers' converters write them."""
    from llavakit.processing.image_next import LlavaNextImageProcessor
    from llavakit.processing.image_onevision import LlavaOnevisionImageProcessor
    from llavakit.processing.llava_next_video import LlavaNextVideoProcessor
    from llavakit.processing.llava_onevision import LlavaOnevisionProcessor
    from llavakit.processing.video_processor import LlavaNextVideoVideoProcessor, LlavaOnevisionVideoProcessor

    size, patch = config.vision_config.image_size, config.vision_config.patch_size
    if kind == "llava_onevision":
        tok = _tokenizer_with(tokenizer, {"<image>": config.image_token_index, "<video>": config.video_token_index})
        square = {"height": size, "width": size}
        return LlavaOnevisionProcessor(
            LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=config.image_grid_pinpoints), tok,
            video_processor=LlavaOnevisionVideoProcessor(size=square), num_image_tokens=(size // patch) ** 2,
            vision_feature_select_strategy=config.vision_feature_select_strategy, chat_template=template,
            vision_aspect_ratio=config.vision_aspect_ratio)
    tok = _tokenizer_with(tokenizer, {"<video>": config.video_token_index, "<image>": config.image_token_index,
                                      "<pad>": config.pad_token_id}, pad="<pad>")
    sizes = dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaNextVideoProcessor(
        LlavaNextVideoVideoProcessor(**sizes), LlavaNextImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints,
                                                                       **sizes),
        tok, chat_template=template, patch_size=patch,
        vision_feature_select_strategy=config.vision_feature_select_strategy, num_additional_image_tokens=1)


def _tokenizer_with_image_and_pad(path: str | os.PathLike, config: Any) -> Any:
    """The original tokenizer plus `<image>` (special) and `<pad>` (the pad token), at the ids the config uses."""
    return _tokenizer_with(path, {"<image>": config.image_token_index, "<pad>": getattr(config, "pad_token_id", None)},
                           pad="<pad>")


def _tokenizer_with(path: str | os.PathLike, wanted: dict[str, int | None], pad: str | None = None) -> Any:
    """The original tokenizer plus the `wanted` special tokens (in id order; `pad` becomes the pad token), checked
    to land on the ids the model's config gives them."""
    from llavakit.processing.tokenizer import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    for token in sorted(wanted, key=lambda t: (wanted[t] is None, wanted[t] or 0)):
        if token in tok.get_vocab():
            if token == pad:
                tok.pad_token = pad
        elif token == pad:
            tok.add_special_tokens({"pad_token": pad})
        else:
            tok.add_tokens([token], special_tokens=True)
    got = {token: tok.convert_tokens_to_ids(token) for token in wanted}
    if got != wanted:
        gives, expects = (", ".join(f"{t}={i}" for t, i in ids.items()) for ids in (got, wanted))
        raise ValueError(f"the tokenizer gives {gives}, but the model expects {expects} (the original vocabulary "
                         "size decides them); pass --tokenizer with the original LLaVA tokenizer")
    tok.padding_side = "left"  # batched generation needs left padding, as the llava-hf tokenizers have
    return tok
