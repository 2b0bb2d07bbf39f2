"""LlavaOnevisionProcessor: prompts + images + videos -> input_ids, pixel_values, pixel_values_videos for OneVision.

`<image>` counts (P = num_image_tokens, the vision tower's patches per view, e.g. 729):
- a sample's only image: the anyres feature map unpadded, then shrunk ("anyres_max_9") so that it holds
  at most about 9 views' worth of patches, + one newline per row, + P for the base view;
- each image of a multi-image sample: P + 1 (its base view and one newline).
A "default" feature strategy drops one token. `<video>`: frames x ceil(sqrt(P) / 2)^2 (2x2 pooling) + 1.
"""

from __future__ import annotations

import math
import re
from typing import Any

from llavakit.anyres import select_best_resolution, unpadded_size
from llavakit.processing.image_onevision import LlavaOnevisionImageProcessor
from llavakit.processing.llava import LlavaProcessor
from llavakit.processing.video_processor import LlavaOnevisionVideoProcessor


def max_views(vision_aspect_ratio: str) -> int:
    """9 for "anyres_max_9": the most views' worth of patches a single image may keep."""
    match = re.fullmatch(r"anyres_max_(\d+)", str(vision_aspect_ratio))
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"vision_aspect_ratio must look like 'anyres_max_9', got {vision_aspect_ratio!r}")
    return int(match.group(1))


class LlavaOnevisionProcessor(LlavaProcessor):
    """Wraps a LlavaOnevisionImageProcessor, a tokenizer and a LlavaOnevisionVideoProcessor."""

    image_processor_class = LlavaOnevisionImageProcessor
    video_processor_class = LlavaOnevisionVideoProcessor
    config_keys = ("num_image_tokens", "vision_feature_select_strategy", "image_token", "video_token",
                   "vision_aspect_ratio")

    def __init__(self, image_processor: LlavaOnevisionImageProcessor, tokenizer: Any,
                 video_processor: LlavaOnevisionVideoProcessor | None = None, num_image_tokens: int | None = None,
                 vision_feature_select_strategy: str | None = None, chat_template: str | dict | None = None,
                 image_token: str = "<image>", video_token: str = "<video>",
                 vision_aspect_ratio: str = "anyres_max_9"):
        if image_processor is not None and not hasattr(image_processor, "image_grid_pinpoints"):
            raise TypeError(f"LlavaOnevisionProcessor needs a LlavaOnevisionImageProcessor (with "
                            f"image_grid_pinpoints), got {type(image_processor).__name__}")
        if num_image_tokens is not None and (not isinstance(num_image_tokens, int) or num_image_tokens < 1
                                             or math.isqrt(num_image_tokens) ** 2 != num_image_tokens):
            raise ValueError(f"num_image_tokens must be a positive square int (patches per view, e.g. 729 = 27^2), "
                             f"got {num_image_tokens!r}")
        max_views(vision_aspect_ratio)
        super().__init__(image_processor, tokenizer, vision_feature_select_strategy=vision_feature_select_strategy,
                         chat_template=chat_template, image_token=image_token)
        self.num_image_tokens = num_image_tokens
        self.vision_aspect_ratio = vision_aspect_ratio
        self.video_processor = video_processor
        self.video_token, self.video_token_id = _token(tokenizer, "video_token", video_token)

    @property
    def model_input_names(self) -> list[str]:
        video = list(self.video_processor.model_input_names) if self.video_processor is not None else []
        return super().model_input_names + video

    def _patches_per_side(self) -> int:
        if self.num_image_tokens is None:
            raise ValueError("num_image_tokens is not set on this LlavaOnevisionProcessor, so the number of image "
                             "and video tokens is unknown; pass num_image_tokens= (patches per view, e.g. 729)")
        return math.isqrt(self.num_image_tokens)

    def num_image_tokens_for(self, orig_height: int, orig_width: int, height: int | None = None,
                             width: int | None = None, multi_image: bool = False) -> int:
        """`<image>` tokens for one (orig_height x orig_width) image whose views are (height x width) after
        processing (default: the image processor's size); multi_image: it shares its sample with others."""
        side = self._patches_per_side()
        if multi_image:
            count = self.num_image_tokens + 1  # the base view + one newline
        else:
            if height is None or width is None:
                size = self.image_processor.size
                height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
            best_h, best_w = select_best_resolution((orig_height, orig_width),
                                                    self.image_processor.image_grid_pinpoints)
            rows, cols = unpadded_size((orig_height, orig_width), (side * (best_h // height), side * (best_w // width)))
            grid, newlines = rows * cols, rows
            ratio = math.sqrt(rows * cols / (max_views(self.vision_aspect_ratio) * side ** 2))
            if ratio > 1.1:  # too many patches: the model interpolates the map down by `ratio`
                grid, newlines = int(rows // ratio) * int(cols // ratio), int(rows // ratio)
            count = grid + newlines + self.num_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def num_video_tokens(self, num_frames: int) -> int:
        """`<video>` tokens for a video of num_frames frames: each frame's map pooled 2x2, + one newline."""
        pooled = math.ceil(self._patches_per_side() / 2)
        return num_frames * pooled * pooled + 1

    def _process_images(self, images: Any, flat: list[Any], image_kwargs: dict[str, Any]) -> dict[str, Any]:
        return self.image_processor(images, **image_kwargs)  # the nesting gives batch_num_images

    def _image_token_counts(self, image_outputs: dict[str, Any], channels_last: bool) -> list[int]:
        views = image_outputs.get("pixel_values", [])
        if len(views) == 0:
            return []
        view_shape = views[0][0].shape  # (C, h, w), or (h, w, C) with channels_last
        height, width = view_shape[:2] if channels_last else view_shape[-2:]
        multi = [n != 1 for n in image_outputs["batch_num_images"] for _ in range(int(n))]
        return [self.num_image_tokens_for(int(h), int(w), int(height), int(width), multi_image=m)
                for (h, w), m in zip(image_outputs["image_sizes"], multi)]

    def _video_token_counts(self, video_outputs: dict[str, Any]) -> list[int]:
        return [self.num_video_tokens(len(video)) for video in video_outputs["pixel_values_videos"]]

    def to_dict(self) -> dict[str, Any]:
        """processor_config.json content (the image/video processors and tokenizer have their own files)."""
        return {"image_token": self.image_token, "num_image_tokens": self.num_image_tokens,
                "processor_class": type(self).__name__, "video_token": self.video_token,
                "vision_aspect_ratio": self.vision_aspect_ratio,
                "vision_feature_select_strategy": self.vision_feature_select_strategy}


def _token(tokenizer: Any, attribute: str, default: str) -> tuple[str, int]:
    """(token, id) for a placeholder the tokenizer may rename (tokenizer_config.json "video_token")."""
    token = getattr(tokenizer, attribute, None) or default
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the {attribute.replace('_', ' ')} {token!r} is not in the tokenizer's vocabulary; add it "
                         f"with tokenizer.add_tokens([{token!r}], special_tokens=True)")
    return token, token_id
