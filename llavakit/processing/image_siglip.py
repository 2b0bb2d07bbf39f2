"""SiglipImageProcessor: resize straight to (height, width), rescale, normalize with mean = std = 0.5; no crop.

The image processor of LLaVA-Interleave; the same numbers as transformers' PIL path. Only the defaults
and the saved config differ from CLIPImageProcessor, whose transforms it runs.
"""

from __future__ import annotations

from typing import Any, Sequence

from llavakit.processing.image import BICUBIC, CLIPImageProcessor

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)


class SiglipImageProcessor(CLIPImageProcessor):
    """CLIPImageProcessor with SigLIP defaults: size {"height": 224, "width": 224}, no center crop, 0.5 mean/std."""

    def __init__(self, do_resize: bool = True, size: dict | int | None = None, resample: int = BICUBIC,
                 do_rescale: bool = True, rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean: Sequence[float] | float | None = None, image_std: Sequence[float] | float | None = None,
                 do_convert_rgb: bool = True, do_center_crop: bool | None = None, **extra: Any):
        super().__init__(do_resize=do_resize, size=size if size is not None else {"height": 224, "width": 224},
                         resample=resample, do_center_crop=bool(do_center_crop), do_rescale=do_rescale,
                         rescale_factor=rescale_factor, do_normalize=do_normalize,
                         image_mean=list(IMAGENET_STANDARD_MEAN) if image_mean is None else image_mean,
                         image_std=list(IMAGENET_STANDARD_STD) if image_std is None else image_std,
                         do_convert_rgb=do_convert_rgb, **extra)

    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json content; crop keys only when cropping was asked for."""
        out = super().to_dict()
        out["image_processor_type"] = "SiglipImageProcessor"
        if not self.do_center_crop:
            out.pop("do_center_crop")
            out.pop("crop_size")
        return out
