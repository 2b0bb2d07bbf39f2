"""LlavaNextVideoProcessor: LLaVA-NeXT's image processing plus videos, for LLaVA-NeXT-Video.

`<image>` counts are LLaVA-NeXT's (anyres). Each `<video>` becomes frames x (h / patch) x (w / patch) / 4
tokens: every frame's feature map is average-pooled 2x2 and no CLS is kept, whatever the feature strategy.
"""

from __future__ import annotations

from typing import Any

from llavakit.processing.image_next import LlavaNextImageProcessor
from llavakit.processing.llava_next import LlavaNextProcessor
from llavakit.processing.llava_onevision import _token
from llavakit.processing.video_processor import LlavaNextVideoVideoProcessor


class LlavaNextVideoProcessor(LlavaNextProcessor):
    """Wraps a LlavaNextVideoVideoProcessor, a LlavaNextImageProcessor and a tokenizer (transformers' order)."""

    video_processor_class = LlavaNextVideoVideoProcessor
    config_keys = LlavaNextProcessor.config_keys + ("video_token",)

    def __init__(self, video_processor: LlavaNextVideoVideoProcessor | None = None,
                 image_processor: LlavaNextImageProcessor | None = None, tokenizer: Any = None,
                 chat_template: str | dict | None = None, patch_size: int | None = None,
                 vision_feature_select_strategy: str | None = None, video_token: str = "<video>",
                 image_token: str = "<image>", num_additional_image_tokens: int = 0):
        super().__init__(image_processor, tokenizer, patch_size=patch_size,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, num_additional_image_tokens=num_additional_image_tokens)
        self.video_processor = video_processor
        self.video_token, self.video_token_id = _token(tokenizer, "video_token", video_token)

    @property
    def model_input_names(self) -> list[str]:
        video = list(self.video_processor.model_input_names) if self.video_processor is not None else []
        return video + super().model_input_names  # transformers' order: video processor first

    def num_video_tokens(self, num_frames: int, height: int, width: int) -> int:
        """`<video>` tokens for num_frames processed (height x width) frames."""
        if self.patch_size is None:
            raise ValueError("patch_size is not set on this LlavaNextVideoProcessor, so the number of video tokens "
                             "is unknown; pass patch_size= (the vision tower's patch size, e.g. 14)")
        return (height // self.patch_size) * (width // self.patch_size) // 4 * num_frames

    def _video_token_counts(self, video_outputs: dict[str, Any]) -> list[int]:
        return [self.num_video_tokens(len(video), int(video.shape[-2]), int(video.shape[-1]))
                for video in video_outputs["pixel_values_videos"]]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["video_token"] = self.video_token
        return out
