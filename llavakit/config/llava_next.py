"""LlavaNextConfig: LLaVA's config plus the anyres grid pinpoints (model_type "llava_next")."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from llavakit.anyres import DEFAULT_PINPOINTS, check_pinpoints
from llavakit.config.llava import LlavaConfig


@dataclasses.dataclass(init=False)
class LlavaNextConfig(LlavaConfig):
    """LLaVA-NeXT (v1.6): LLaVA's fields, plus `image_grid_pinpoints`, the candidate canvases an image is
    resized onto before being cut into vision-tower-sized crops. They must equal the image processor's.

    Unlike LlavaConfig, `tie_word_embeddings` is not taken from the text config (as in transformers 5).
    Old Hub configs' `use_image_newline_parameter` is kept as an unknown key: `image_newline` always exists.
    """

    model_type: ClassVar[str] = "llava_next"

    image_grid_pinpoints: list[list[int]] | None = None

    def __post_init__(self) -> None:
        tie_word_embeddings = self.tie_word_embeddings
        if self.image_grid_pinpoints is None:
            self.image_grid_pinpoints = [list(p) for p in DEFAULT_PINPOINTS]
        super().__post_init__()
        self.tie_word_embeddings = tie_word_embeddings  # undo LlavaConfig's copy from the text config

    def validate(self) -> None:
        super().validate()
        self.image_grid_pinpoints = check_pinpoints(self.image_grid_pinpoints)
