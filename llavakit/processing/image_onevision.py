"""LlavaOnevisionImageProcessor: OneVision's images, the same numbers as transformers' PIL path.

A sample with one image gets anyres views (the whole image squashed to `size`, then tiles of the image
fitted and zero-padded to its best grid); a sample with several images gets one view each, padded to a
square with the mean colour. Every view is then resized to `size`, rescaled and normalized (no crop).
`batch_num_images` records how many images each sample had, which decides the path and the token count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image

from llavakit.anyres import check_pinpoints
from llavakit.processing.batch import BatchFeature
from llavakit.processing.image import BICUBIC, CLIPImageProcessor, ImageInput, flatten_images, size_dict, \
    to_channels_first
from llavakit.processing.image_llava import pad_colour, pad_to_square
from llavakit.processing.image_next import anyres_views, anyres_views_pil
from llavakit.processing.image_pil import as_rgb_pil, paste_centered

# (height, width) canvases of llava-onevision at 384 px: every 1..6 x 1..6 grid of 384-px tiles.
ONEVISION_PINPOINTS = [[384 * rows, 384 * cols] for rows in range(1, 7) for cols in range(1, 7)]


def batch_num_images(images: ImageInput) -> list[int]:
    """Images per sample: nested lists are samples (empty ones dropped); anything else is one image each."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple)):
        return [len(sample) for sample in images if len(sample)]
    return [1] * len(flatten_images(images))


class LlavaOnevisionImageProcessor(CLIPImageProcessor):
    """`__call__` returns pixel_values (B, max_views, 3, H, W) (zero-padded over views when do_pad),
    image_sizes (B, 2) as (height, width), and batch_num_images (images per sample)."""

    model_input_names = ["pixel_values", "image_sizes", "batch_num_images"]
    valid_kwargs = CLIPImageProcessor.valid_kwargs + ("image_grid_pinpoints", "do_pad")

    def __init__(self, do_resize: bool = True, size: dict | int | None = None, resample: int = BICUBIC,
                 image_grid_pinpoints: list[list[int]] | None = None, do_pad: bool = True,
                 do_center_crop: bool | None = None, crop_size: dict | int | None = None, **kwargs: Any):
        super().__init__(do_resize=do_resize, size=size if size is not None else {"height": 384, "width": 384},
                         resample=resample, do_center_crop=bool(do_center_crop), crop_size=crop_size, **kwargs)
        self._has_crop_size = crop_size is not None  # the tile size is the crop height when one is set
        self.image_grid_pinpoints = check_pinpoints(
            ONEVISION_PINPOINTS if image_grid_pinpoints is None else image_grid_pinpoints)
        self.do_pad = do_pad

    def preprocess(self, images: ImageInput, *, size: dict | int | None = None,
                   image_grid_pinpoints: list[list[int]] | None = None, resample: int | None = None,
                   crop_size: dict | int | None = None, do_pad: bool | None = None,
                   do_convert_rgb: bool | None = None, return_tensors: str | None = None,
                   data_format: str = "channels_first", input_data_format: str | None = None,
                   **clip_kwargs: Any) -> BatchFeature:
        """Images (one, a list, or per-sample lists) -> BatchFeature(pixel_values, image_sizes, batch_num_images);
        other keywords (do_resize, do_rescale, rescale_factor, do_normalize, image_mean, image_std,
        do_center_crop) go to the per-view pipeline."""
        unknown = set(clip_kwargs) - set(self.valid_kwargs)
        if unknown:
            raise TypeError(f"unexpected LlavaOnevisionImageProcessor arguments {sorted(unknown)}")
        size = size_dict(self.size if size is None else size, default_to_square=False)
        pinpoints = check_pinpoints(self.image_grid_pinpoints if image_grid_pinpoints is None
                                    else image_grid_pinpoints)
        resample = self.resample if resample is None else resample
        do_convert_rgb = self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb
        do_pad = self.do_pad if do_pad is None else do_pad
        base_size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        if crop_size is not None or self._has_crop_size:
            tile = size_dict(self.crop_size if crop_size is None else crop_size, default_to_square=True,
                             name="crop_size")["height"]
        else:
            tile = base_size[0]
        counts = batch_num_images(images)
        flat = flatten_images([img for sample in images if len(sample) for img in sample]
                              if isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple))
                              else images)
        if not flat:
            raise ValueError("no images were given (an empty list)")
        single = [n == 1 for n in counts for _ in range(n)]  # anyres views only for a sample's only image
        colour = tuple(pad_colour(self.image_mean, 3))

        pixel_values, image_sizes = [], []
        for image, anyres in zip(flat, single):
            pil = as_rgb_pil(image, do_convert_rgb)
            if pil is not None:
                height, width = pil.height, pil.width
                if anyres:
                    views = anyres_views_pil(pil, pinpoints, base_size, tile, resample)
                else:
                    side = max(height, width)
                    views = [pil if height == width else
                             paste_centered(pil, side, side, (side - height) // 2, (side - width) // 2, colour)]
            else:
                array = to_channels_first(image, do_convert_rgb, input_data_format)  # (C, H, W)
                height, width = array.shape[1:]
                if anyres:
                    views = anyres_views(array, pinpoints, base_size, tile, resample)
                else:
                    fill = pad_colour(self.image_mean, array.shape[0])
                    views = [pad_to_square(array, fill)]  # (C, L, L)
            processed = super().preprocess(views, size=size, resample=resample, do_convert_rgb=False,
                                           data_format=data_format, input_data_format="channels_first",
                                           **clip_kwargs)["pixel_values"]
            shapes = {view.shape for view in processed}
            if len(shapes) > 1:
                raise ValueError(f"the views of a {height}x{width} image have different processed shapes "
                                 f"{sorted(shapes)}: use a fixed (height, width) size")
            pixel_values.append(np.stack(processed))  # (views, C, h, w)
            image_sizes.append((int(height), int(width)))

        views_per_image = [len(v) for v in pixel_values]
        if do_pad:
            most = max(views_per_image)
            pixel_values = [np.pad(v, ((0, most - len(v)),) + ((0, 0),) * 3) if len(v) < most else v
                            for v in pixel_values]
        elif return_tensors is not None and len(set(views_per_image)) > 1:
            raise ValueError(f"cannot stack images with different numbers of views {views_per_image} with "
                             "do_pad=False; pass do_pad=True (zero views at the end) or return_tensors=None")
        return BatchFeature({"pixel_values": pixel_values, "image_sizes": image_sizes, "batch_num_images": counts},
                            tensor_type=return_tensors)

    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json content, in transformers' key names."""
        out = super().to_dict()
        out.update({"do_pad": self.do_pad, "image_grid_pinpoints": [list(p) for p in self.image_grid_pinpoints],
                    "image_processor_type": "LlavaOnevisionImageProcessor"})
        if not self._has_crop_size:
            out.pop("crop_size")
        if not self.do_center_crop:
            out.pop("do_center_crop")
        return out
