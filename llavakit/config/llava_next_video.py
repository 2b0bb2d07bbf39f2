"""LlavaNextVideoConfig: LLaVA-NeXT plus a `<video>` token and the frame pooler (model_type "llava_next_video")."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from llavakit.anyres import DEFAULT_PINPOINTS, check_pinpoints
from llavakit.config.base import check_choice, check_positive
from llavakit.config.llava import LlavaConfig

POOL_MODES = ("average", "max", "conv")


@dataclasses.dataclass(init=False)
class LlavaNextVideoConfig(LlavaConfig):
    """LLaVA-NeXT-Video: LLaVA-NeXT's fields, the `<video>` token, and how each frame's patch grid is pooled
    (`spatial_pool_mode` average / max / a learned conv, with kernel = stride = `spatial_pool_stride`).

    Token ids follow the llava-hf conversion: `<video>` 32000, `<image>` 32001. The head is tied when either
    the top-level or the text config's `tie_word_embeddings` says so, as in transformers.
    """

    model_type: ClassVar[str] = "llava_next_video"

    image_token_index: int = 32001
    video_token_index: int = 32000
    image_grid_pinpoints: list[list[int]] | None = None
    spatial_pool_mode: str = "average"
    spatial_pool_stride: int = 2
    video_seq_length: int = 288

    def __post_init__(self) -> None:
        if self.image_grid_pinpoints is None:
            self.image_grid_pinpoints = [list(p) for p in DEFAULT_PINPOINTS]
        super().__post_init__()

    @classmethod
    def _rename_legacy_keys(cls, data: dict) -> dict:
        data = super()._rename_legacy_keys(data)
        if "video_token_id" in data:
            data.setdefault("video_token_index", data.pop("video_token_id"))
        return data

    def validate(self) -> None:
        super().validate()
        self.image_grid_pinpoints = check_pinpoints(self.image_grid_pinpoints)
        check_choice("spatial_pool_mode", self.spatial_pool_mode, POOL_MODES)
        check_positive(self, "spatial_pool_stride")

    @property
    def video_token_id(self) -> int:
        return self.video_token_index
