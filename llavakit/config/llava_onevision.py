"""LlavaOnevisionConfig: LLaVA-OneVision's SigLIP tower + Qwen2 decoder, anyres_max images and video (model_type
"llava_onevision")."""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

from llavakit.anyres import check_pinpoints
from llavakit.config.llava import LlavaConfig
from llavakit.config.qwen2 import Qwen2Config
from llavakit.config.siglip import SiglipVisionConfig

# The 6x6 canvases of 384 px crops OneVision's config uses unless it gives its own.
ONEVISION_PINPOINTS = [[384 * h, 384 * w] for h in range(1, 7) for w in range(1, 7)]
ASPECT_RATIO = re.compile(r"anyres_max_(\d+)")


def default_siglip_config() -> SiglipVisionConfig:
    """SigLIP so400m/14 at 384 px without the pooling head: OneVision's tower when a config names none."""
    return SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, patch_size=14, image_size=384,
                              num_hidden_layers=26, num_attention_heads=16, vision_use_head=False)


def max_tiles(vision_aspect_ratio: str) -> int:
    """N of "anyres_max_N": how many crops' worth of grid features an image keeps before it is shrunk."""
    match = ASPECT_RATIO.fullmatch(str(vision_aspect_ratio))
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"vision_aspect_ratio must look like 'anyres_max_9' (a positive tile count), "
                         f"got {vision_aspect_ratio!r}")
    return int(match.group(1))


@dataclasses.dataclass(init=False)
class LlavaOnevisionConfig(LlavaConfig):
    """LLaVA-OneVision: LLaVA's fields with OneVision's defaults, the anyres `image_grid_pinpoints`, the
    `<video>` token and `vision_aspect_ratio` ("anyres_max_N": grids bigger than N crops are shrunk).

    Like transformers, a missing vision/text config means SigLIP-so400m / Qwen2-7B, and the head is tied when
    either the top-level or the text config's `tie_word_embeddings` says so.
    """

    model_type: ClassVar[str] = "llava_onevision"

    image_token_index: int = 151646
    video_token_index: int = 151647
    vision_feature_select_strategy: str = "full"
    vision_feature_layer: int | list[int] = -1
    image_grid_pinpoints: list[list[int]] | None = None
    vision_aspect_ratio: str = "anyres_max_9"

    def __post_init__(self) -> None:
        if self.vision_config is None:
            self.vision_config = default_siglip_config()
        if self.text_config is None:
            self.text_config = Qwen2Config()
        if isinstance(self.vision_config, dict):
            self.vision_config = {"model_type": "siglip_vision_model", **self.vision_config}
        if isinstance(self.text_config, dict):
            self.text_config = {"model_type": "qwen2", **self.text_config}
        if self.image_grid_pinpoints is None:
            self.image_grid_pinpoints = [list(p) for p in ONEVISION_PINPOINTS]
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
        max_tiles(self.vision_aspect_ratio)

    @property
    def video_token_id(self) -> int:
        return self.video_token_index
