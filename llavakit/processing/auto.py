"""AutoProcessor / AutoImageProcessor: pick the processing class a checkpoint declares, then load it."""

from __future__ import annotations

import json
import os
from typing import Any

from llavakit.loading.hub import resolve_file
from llavakit.loading.original import is_original_config
from llavakit.processing.image import CLIPImageProcessor, load_image_processor_dict
from llavakit.processing.image_siglip import SiglipImageProcessor
from llavakit.processing.image_llava import LlavaImageProcessor
from llavakit.processing.image_next import LlavaNextImageProcessor
from llavakit.processing.llava import LlavaProcessor
from llavakit.processing.image_onevision import LlavaOnevisionImageProcessor
from llavakit.processing.llava_next import LlavaNextProcessor
from llavakit.processing.llava_next_video import LlavaNextVideoProcessor
from llavakit.processing.llava_onevision import LlavaOnevisionProcessor
from llavakit.processing.tokenizer import AutoTokenizer, drop_transformers_only_kwargs
from llavakit.processing.video_processor import VIDEO_PROCESSOR_CLASSES, VideoProcessor, load_video_processor_dict

PROCESSOR_CLASSES = {"LlavaProcessor": LlavaProcessor, "LlavaNextProcessor": LlavaNextProcessor,
                     "LlavaOnevisionProcessor": LlavaOnevisionProcessor,
                     "LlavaNextVideoProcessor": LlavaNextVideoProcessor}
MODEL_TYPE_TO_PROCESSOR = {"llava": LlavaProcessor, "llava_next": LlavaNextProcessor,
                           "llava_onevision": LlavaOnevisionProcessor, "llava_next_video": LlavaNextVideoProcessor}
IMAGE_PROCESSOR_CLASSES = {"CLIPImageProcessor": CLIPImageProcessor, "CLIPImageProcessorFast": CLIPImageProcessor,
                           "CLIPImageProcessorPil": CLIPImageProcessor, "CLIPFeatureExtractor": CLIPImageProcessor}
IMAGE_PROCESSOR_CLASSES.update(dict.fromkeys(
    ["SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil"], SiglipImageProcessor))
IMAGE_PROCESSOR_CLASSES.update({name: LlavaImageProcessor for name in ("LlavaImageProcessor", "LlavaImageProcessorFast",
                                                                       "LlavaImageProcessorPil")})
IMAGE_PROCESSOR_CLASSES.update(dict.fromkeys(
    ["LlavaNextImageProcessor", "LlavaNextImageProcessorFast", "LlavaNextImageProcessorPil"], LlavaNextImageProcessor))
IMAGE_PROCESSOR_CLASSES.update(dict.fromkeys(
    ["LlavaOnevisionImageProcessor", "LlavaOnevisionImageProcessorFast", "LlavaOnevisionImageProcessorPil"],
    LlavaOnevisionImageProcessor))


def _read(path_or_repo_id: str | os.PathLike, filename: str, hub: dict[str, Any]) -> dict[str, Any] | None:
    path = resolve_file(path_or_repo_id, filename, required=False, **hub)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None


def _hub(revision: str | None, local_files_only: bool, cache_dir: str | None, token: str | bool | None,
         subfolder: str | None, force_download: bool) -> dict[str, Any]:
    return dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
                subfolder=subfolder, force_download=force_download)


class AutoProcessor:
    """The checkpoint's processor: processor_config.json's processor_class, else an original LLaVA config.json's
    own processor (original_llava.py; kwargs vision_tower=, model_base=, chat_template=), else config.json's model_type;
    a checkpoint with only tokenizer files gives its tokenizer, one with only image files its image processor."""

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **kwargs: Any) -> Any:
        hub = _hub(revision, local_files_only, cache_dir, token, subfolder, force_download)
        declared = None
        for filename in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
            found = (_read(path_or_repo_id, filename, hub) or {}).get("processor_class")
            if found:
                declared = found
                break
        if declared is not None:
            if declared not in PROCESSOR_CLASSES:
                raise ValueError(f"{os.fspath(path_or_repo_id)} declares processor_class {declared!r}, which llavakit "
                                 f"does not support; supported: {sorted(PROCESSOR_CLASSES)}")
            return PROCESSOR_CLASSES[declared].from_pretrained(path_or_repo_id, **hub, **kwargs)

        model_config = _read(path_or_repo_id, "config.json", hub) or {}
        if is_original_config(model_config):  # liuhaotian / mucai / LLaVA-NeXT repo layouts
            from llavakit.processing.original_llava import build_processor

            drop_transformers_only_kwargs(kwargs)
            return build_processor(path_or_repo_id, model_config, hub=hub, **kwargs)
        model_type = model_config.get("model_type")
        if model_type is not None:
            if model_type not in MODEL_TYPE_TO_PROCESSOR:
                raise ValueError(f"{os.fspath(path_or_repo_id)} is a {model_type!r} checkpoint, which llavakit has no "
                                 f"processor for; supported model types: {sorted(MODEL_TYPE_TO_PROCESSOR)}")
            return MODEL_TYPE_TO_PROCESSOR[model_type].from_pretrained(path_or_repo_id, **hub, **kwargs)

        if resolve_file(path_or_repo_id, "tokenizer.json", required=False, **hub) is not None:
            return AutoTokenizer.from_pretrained(path_or_repo_id, **hub, **kwargs)
        if resolve_file(path_or_repo_id, "preprocessor_config.json", required=False, **hub) is not None:
            return AutoImageProcessor.from_pretrained(path_or_repo_id, **hub, **kwargs)
        raise ValueError(f"cannot find a processor in {os.fspath(path_or_repo_id)}: expected processor_config.json, "
                         "config.json with a model_type, tokenizer.json or preprocessor_config.json")


class AutoImageProcessor:
    """The image processor named by `image_processor_type` in the checkpoint's image processor config."""

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **kwargs: Any) -> CLIPImageProcessor:
        config = load_image_processor_dict(path_or_repo_id, **_hub(revision, local_files_only, cache_dir, token,
                                                                    subfolder, force_download))
        drop_transformers_only_kwargs(kwargs)
        name = config.get("image_processor_type") or config.get("feature_extractor_type") or "CLIPImageProcessor"
        if name not in IMAGE_PROCESSOR_CLASSES:
            raise ValueError(f"image processor {name!r} is not supported by llavakit; supported: "
                             f"{sorted(IMAGE_PROCESSOR_CLASSES)}")
        return IMAGE_PROCESSOR_CLASSES[name].from_dict(config, **kwargs)



class AutoVideoProcessor:
    """The video processor named by `video_processor_type` in the checkpoint's video processor config."""

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **kwargs: Any) -> VideoProcessor:
        config = load_video_processor_dict(path_or_repo_id, **_hub(revision, local_files_only, cache_dir, token,
                                                                    subfolder, force_download))
        drop_transformers_only_kwargs(kwargs)
        name = config.get("video_processor_type")
        if name not in VIDEO_PROCESSOR_CLASSES:
            raise ValueError(f"video processor {name!r} is not supported by llavakit; supported: "
                             f"{sorted(VIDEO_PROCESSOR_CLASSES)}")
        return VIDEO_PROCESSOR_CLASSES[name].from_dict(config, **kwargs)
