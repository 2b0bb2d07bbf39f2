"""LlavaNextProcessor: LlavaProcessor whose `<image>` count follows the anyres feature map of each image.

N = unpadded grid features + one newline per grid row + base features (+ extra tokens, -1 for "default"),
computed from the original (height, width) the way the model unpads its feature map.
"""

from __future__ import annotations

from typing import Any

from llavakit.anyres import select_best_resolution, unpadded_size
from llavakit.processing.image_next import LlavaNextImageProcessor
from llavakit.processing.llava import LlavaProcessor


class LlavaNextProcessor(LlavaProcessor):
    """Prompts + images -> input_ids, attention_mask, pixel_values (B, views, 3, H, W) and image_sizes."""

    image_processor_class = LlavaNextImageProcessor

    def __init__(self, image_processor: LlavaNextImageProcessor, tokenizer: Any, **kwargs: Any):
        if image_processor is not None and not hasattr(image_processor, "image_grid_pinpoints"):
            raise TypeError(f"LlavaNextProcessor needs a LlavaNextImageProcessor (with image_grid_pinpoints), got "
                            f"{type(image_processor).__name__}")
        super().__init__(image_processor, tokenizer, **kwargs)

    def num_image_tokens(self, orig_height: int, orig_width: int, height: int | None = None,
                         width: int | None = None) -> int:
        """How many `<image>` tokens an original (orig_height x orig_width) image needs, its views being
        (height x width) after processing (default: the image processor's crop size)."""
        if self.patch_size is None:
            raise ValueError("patch_size is not set on this LlavaNextProcessor, so the number of image tokens is "
                             "unknown; pass patch_size= (the vision tower's patch size, e.g. 14)")
        if height is None or width is None:
            height, width = self.image_processor.crop_size["height"], self.image_processor.crop_size["width"]
        best_height, best_width = select_best_resolution((orig_height, orig_width),
                                                         self.image_processor.image_grid_pinpoints)
        rows, cols = height // self.patch_size, width // self.patch_size  # features per view side
        grid_rows, grid_cols = unpadded_size((orig_height, orig_width),
                                             (rows * (best_height // height), cols * (best_width // width)))
        count = grid_rows * grid_cols + grid_rows + rows * cols + self.num_additional_image_tokens
        return count - 1 if self.vision_feature_select_strategy == "default" else count

    def _image_token_counts(self, image_outputs: dict[str, Any], channels_last: bool) -> list[int]:
        views = image_outputs.get("pixel_values", [])
        if len(views) == 0:
            return []
        view_shape = views[0][0].shape  # (C, h, w), or (h, w, C) with channels_last
        height, width = view_shape[:2] if channels_last else view_shape[-2:]
        return [self.num_image_tokens(int(h), int(w), height, width) for h, w in image_outputs["image_sizes"]]
