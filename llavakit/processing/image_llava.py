"""LlavaImageProcessor: CLIP preprocessing that can first pad each image to a square (`do_pad`).

The original LLaVA-1.5 pads ("expand2square") with the mean colour before resizing, so nothing is
cropped away; transformers' LlavaImageProcessor does the same with do_pad=True.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from llavakit.processing.batch import BatchFeature
from llavakit.processing.image import CLIPImageProcessor, ImageInput, flatten_images, to_channels_first
from llavakit.processing.image_pil import as_rgb_pil, paste_centered


def pad_to_square(image: np.ndarray, colour: Sequence[float]) -> np.ndarray:
    """Centre a (C, H, W) image on a (C, L, L) canvas of `colour`, L = max(H, W); the extra row/column
    of an odd difference goes to the bottom/right."""
    channels, height, width = image.shape
    if height == width:
        return image
    if len(colour) != channels:
        raise ValueError(f"the pad colour has {len(colour)} values but the image has {channels} channel(s); keep "
                         "do_convert_rgb=True for grey, RGBA or palette images")
    side = max(height, width)
    canvas = np.empty((channels, side, side), dtype=image.dtype)
    canvas[:] = np.asarray(colour, dtype=image.dtype)[:, None, None]
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top:top + height, left:left + width] = image
    return canvas


def pad_colour(image_mean: Sequence[float] | float | None, channels: int) -> list[int]:
    """The background colour: each mean * 255, truncated to an int (transformers and the original repo both
    truncate: CLIP's mean gives (122, 116, 104))."""
    if image_mean is None:
        return [0] * channels
    mean = list(image_mean) if isinstance(image_mean, (list, tuple)) else [image_mean] * channels
    return [int(m * 255) for m in mean]


class LlavaImageProcessor(CLIPImageProcessor):
    """CLIPImageProcessor + `do_pad`: pad to a square with the mean colour before resize and crop."""

    valid_kwargs = CLIPImageProcessor.valid_kwargs + ("do_pad",)

    def __init__(self, *args: Any, do_pad: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.do_pad = do_pad

    def preprocess(self, images: ImageInput, *, do_pad: bool | None = None, do_convert_rgb: bool | None = None,
                   input_data_format: str | None = None, image_mean: Sequence[float] | float | None = None,
                   **kwargs: Any) -> BatchFeature:
        """Images -> BatchFeature(pixel_values); with do_pad each image is first padded to a square."""
        do_pad = self.do_pad if do_pad is None else do_pad
        if not do_pad:
            return super().preprocess(images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format,
                                      image_mean=image_mean, **kwargs)
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        mean = self.image_mean if image_mean is None else image_mean
        padded = []
        for image in flatten_images(images):
            pil = as_rgb_pil(image, do_convert_rgb)
            if pil is not None:  # pad in Pillow; the CLIP fast path takes it from there
                side = max(pil.size)
                top, left = (side - pil.height) // 2, (side - pil.width) // 2
                colour = tuple(pad_colour(mean, 3))
                padded.append(pil if pil.width == pil.height else paste_centered(pil, side, side, top, left, colour))
                continue
            array = to_channels_first(image, do_convert_rgb, input_data_format)  # (C, H, W)
            colour = pad_colour(mean, array.shape[0])
            if np.issubdtype(array.dtype, np.floating) and array.size and array.max() <= 1:
                colour = [c / 255 for c in colour]  # a [0, 1] float image gets the same colour on its scale
            padded.append(pad_to_square(array, colour))  # (C, L, L)
        if not padded:
            raise ValueError("no images were given (an empty list)")
        return super().preprocess(padded, do_convert_rgb=False, input_data_format="channels_first",
                                  image_mean=image_mean, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update({"do_pad": self.do_pad, "image_processor_type": "LlavaImageProcessor"})
        return out
