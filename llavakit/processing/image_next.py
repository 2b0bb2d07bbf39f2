"""LlavaNextImageProcessor: LLaVA-NeXT "anyres" preprocessing, the same numbers as transformers' PIL path.

Each image becomes [base view] + crops: the base is the whole image squashed to the CLIP size; the crops
tile the image after an aspect-preserving resize and zero padding to the best grid resolution.
Every view then goes through the CLIP pipeline (resize, center crop, rescale, normalize).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import PIL.Image

from llavakit.anyres import DEFAULT_PINPOINTS, check_pinpoints, select_best_resolution
from llavakit.processing.batch import BatchFeature
from llavakit.processing.image import BILINEAR, CLIPImageProcessor, ImageInput, flatten_images, resize, size_dict, \
    to_channels_first
from llavakit.processing.image_pil import as_rgb_pil, paste_centered, resize_pil, tiles


# ---- resizing, padding and cropping for the grid ----------------------------------------------------
def fit_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """(new_height, new_width) of the aspect-preserving resize that fits (height, width) inside target."""
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def pad_to(image: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Zero-pad a (C, h, w) array to target (H, W), centered; an odd remainder goes to the bottom / right."""
    height, width = image.shape[1:]
    top, left = (target[0] - height) // 2, (target[1] - width) // 2
    padding = ((0, 0), (top, target[0] - height - top), (left, target[1] - width - left))
    return np.pad(image, padding, mode="constant", constant_values=0)


def divide_to_crops(image: np.ndarray, crop: int) -> list[np.ndarray]:
    """Row-major (top to bottom, then left to right) crop x crop tiles of a (C, H, W) array."""
    height, width = image.shape[1:]
    return [image[:, top:top + crop, left:left + crop]
            for top in range(0, height, crop) for left in range(0, width, crop)]


def anyres_views(image: np.ndarray, pinpoints: list[list[int]], base_size: tuple[int, int], crop: int,
                 resample: int | None) -> list[np.ndarray]:
    """[whole image resized to base_size] + crops of the image fitted and padded to its best grid resolution."""
    height, width = image.shape[1:]
    best = select_best_resolution((height, width), pinpoints)
    new_h, new_w = fit_size(height, width, best)
    fitted = resize(image, {"height": new_h, "width": new_w}, resample)  # (C, new_h, new_w)
    canvas = pad_to(fitted, best)  # (C, best_h, best_w)
    base = resize(image, {"height": base_size[0], "width": base_size[1]}, resample)  # (C, *base_size)
    return [base] + divide_to_crops(canvas, crop)


def anyres_views_pil(image: PIL.Image.Image, pinpoints: list[list[int]], base_size: tuple[int, int], crop: int,
                     resample: int | None) -> list[PIL.Image.Image]:
    """`anyres_views` of an RGB PIL image, done in Pillow: the same pixels, each resized once."""
    resample = BILINEAR if resample is None else int(resample)
    best = select_best_resolution((image.height, image.width), pinpoints)
    new_h, new_w = fit_size(image.height, image.width, best)
    fitted = resize_pil(image, new_h, new_w, resample)
    top, left = (best[0] - new_h) // 2, (best[1] - new_w) // 2
    canvas = paste_centered(fitted, best[0], best[1], top, left)  # zero padding, as pad_to
    base = resize_pil(image, base_size[0], base_size[1], resample)
    return [base] + tiles(canvas, crop)


# ---- the processor ------------------------------------------------------------------------------
class LlavaNextImageProcessor(CLIPImageProcessor):
    """CLIP preprocessing of the anyres views; `__call__` returns `pixel_values` (B, max_views, 3, H, W)
    (zero-padded over views when do_pad) and `image_sizes` (B, 2) as (height, width)."""

    model_input_names = ["pixel_values", "image_sizes"]
    valid_kwargs = CLIPImageProcessor.valid_kwargs + ("image_grid_pinpoints", "do_pad")

    def __init__(self, do_resize: bool = True, size: dict | int | None = None,
                 image_grid_pinpoints: list[list[int]] | None = None, do_pad: bool = True, **kwargs: Any):
        super().__init__(do_resize=do_resize, size=size, **kwargs)
        self.image_grid_pinpoints = check_pinpoints(
            DEFAULT_PINPOINTS if image_grid_pinpoints is None else image_grid_pinpoints)
        self.do_pad = do_pad

    def preprocess(self, images: ImageInput, *, do_resize: bool | None = None, size: dict | int | None = None,
                   image_grid_pinpoints: list[list[int]] | None = None, resample: int | None = None,
                   crop_size: dict | int | None = None, do_pad: bool | None = None,
                   do_convert_rgb: bool | None = None, return_tensors: str | None = None,
                   data_format: str = "channels_first", input_data_format: str | None = None,
                   **clip_kwargs: Any) -> BatchFeature:
        """Images -> BatchFeature(pixel_values, image_sizes); other keywords (do_center_crop, do_rescale,
        rescale_factor, do_normalize, image_mean, image_std) go to the CLIP pipeline of every view."""
        unknown = set(clip_kwargs) - set(self.valid_kwargs)
        if unknown:
            raise TypeError(f"unexpected LlavaNextImageProcessor arguments {sorted(unknown)}")
        size = size_dict(self.size if size is None else size, default_to_square=False)
        crop_size = size_dict(self.crop_size if crop_size is None else crop_size, default_to_square=True,
                              name="crop_size")
        pinpoints = check_pinpoints(self.image_grid_pinpoints if image_grid_pinpoints is None
                                    else image_grid_pinpoints)
        resample = self.resample if resample is None else resample
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        do_pad = self.do_pad if do_pad is None else do_pad
        # the base view is squashed to a square of the shortest edge (or to the fixed size)
        base_size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        crop = crop_size["height"]  # transformers tiles with square crops of the crop height

        flat = flatten_images(images)
        if not flat:
            raise ValueError("no images were given (an empty list)")
        pixel_values, image_sizes = [], []
        for image in flat:
            pil = as_rgb_pil(image, do_convert_rgb)
            if pil is not None:  # Pillow views; the CLIP fast path processes them
                height, width = pil.height, pil.width
                views = anyres_views_pil(pil, pinpoints, base_size, crop, resample)
            else:
                array = to_channels_first(image, do_convert_rgb, input_data_format)  # (C, H, W)
                height, width = array.shape[1:]
                views = anyres_views(array, pinpoints, base_size, crop, resample)
            processed = super().preprocess(views, do_resize=do_resize, size=size, resample=resample,
                                           crop_size=crop_size, do_convert_rgb=False, data_format=data_format,
                                           input_data_format="channels_first", **clip_kwargs)["pixel_values"]
            shapes = {view.shape for view in processed}
            if len(shapes) > 1:
                raise ValueError(f"the anyres views of a {height}x{width} image have different "
                                 f"processed shapes {sorted(shapes)}: keep do_center_crop=True, or use grid pinpoints "
                                 f"that are multiples of the crop size {crop}")
            pixel_values.append(np.stack(processed))  # (views, C, h, w)
            image_sizes.append((int(height), int(width)))

        counts = [len(views) for views in pixel_values]
        if do_pad:
            most = max(counts)
            pixel_values = [np.pad(v, ((0, most - len(v)),) + ((0, 0),) * 3) if len(v) < most else v
                            for v in pixel_values]
        elif return_tensors is not None and len(set(counts)) > 1:
            raise ValueError(f"cannot stack images with different numbers of anyres views {counts} with do_pad=False; "
                             "pass do_pad=True (zero views at the end) or return_tensors=None")
        return BatchFeature({"pixel_values": pixel_values, "image_sizes": image_sizes}, tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json content, in transformers' key names."""
        out = super().to_dict()
        out.update({"do_pad": self.do_pad, "image_grid_pinpoints": [list(p) for p in self.image_grid_pinpoints],
                    "image_processor_type": "LlavaNextImageProcessor"})
        return out
