"""CLIPImageProcessor: images -> normalized `pixel_values`, the same numbers as transformers' PIL path.

Per image: convert to RGB, resize (shortest edge or fixed size, through Pillow), center crop, rescale
to [0, 1], normalize with the CLIP mean/std. Also `load_image` for paths, URLs and data: URLs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import json
import math
import os
import urllib.request
import warnings
from typing import Any, Sequence

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from llavakit.loading.hub import read_json, resolve_file
from llavakit.processing.batch import BatchFeature
from llavakit.processing.image_pil import as_rgb_pil, lookup, resize_pil, rgb_pil

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"

BILINEAR = PIL.Image.Resampling.BILINEAR.value  # 2, transformers' fallback when no resample is set
BICUBIC = PIL.Image.Resampling.BICUBIC.value  # 3, the CLIP default

MAX_IMAGE_PIXELS = 178_956_970  # twice Pillow's warning limit, where Pillow itself refuses to decode
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
ImageInput = Any  # a PIL image, numpy array, torch tensor, path/URL string, or (nested) lists of them


# ---- loading ------------------------------------------------------------------------------------
def _describe(source: Any) -> str:
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    return text if len(text) <= 80 else text[:77] + "..."


def _open_image(data: bytes | str, source: Any, max_pixels: int) -> PIL.Image.Image:
    """Decode bytes or a file path, refusing undecodable data and decompression bombs."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
            width, height = image.size
            if width * height > max_pixels:
                raise ValueError(f"image {_describe(source)} is {width}x{height} = {width * height} pixels, more "
                                 f"than the {max_pixels} allowed (a possible decompression bomb); raise max_pixels "
                                 "to load it")
            image.load()
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"image {_describe(source)} is too large to decode safely: {err}") from None
    except PIL.UnidentifiedImageError:  # its message names a BytesIO object: say what is wrong instead
        raise ValueError(f"cannot decode an image from {_describe(source)}: not an image format Pillow reads "
                         "(PNG, JPEG, WebP, GIF, BMP, TIFF, ...)") from None
    except (OSError, SyntaxError) as err:
        raise ValueError(f"cannot decode an image from {_describe(source)}: {err}") from None
    return image


def load_image(source: Any, *, timeout: float = 10.0, max_bytes: int = MAX_DOWNLOAD_BYTES,
               max_pixels: int = MAX_IMAGE_PIXELS) -> PIL.Image.Image:
    """A PIL image from a PIL image (returned as is), local path, http(s) URL or `data:` base64 URL.

    Loaded files are EXIF-rotated and converted to RGB, as transformers' `load_image` does.
    """
    if isinstance(source, PIL.Image.Image):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("load_image takes a PIL image, a path, an http(s) URL or a data: URL, "
                        f"got {type(source).__name__}")
    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(text, timeout=timeout) as response:  # noqa: S310 (user-given URL)
                data = response.read(max_bytes + 1)
        except OSError as err:
            raise ValueError(f"cannot download image {_describe(text)}: {err}") from None
        if len(data) > max_bytes:
            raise ValueError(f"image at {_describe(text)} is larger than {max_bytes} bytes; raise max_bytes to load it")
        image = _open_image(data, text, max_pixels)
    elif text.startswith("data:"):
        header, _, payload = text.partition(",")
        if ";base64" not in header or not payload:
            raise ValueError(f"data URL {_describe(text)} is not base64 image data "
                             "(expected data:image/...;base64,...)")
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"data URL {_describe(text)} has invalid base64: {err}") from None
        image = _open_image(data, text, max_pixels)
    elif os.path.isfile(text):
        image = _open_image(text, text, max_pixels)
    else:
        raise ValueError(f"image source {_describe(text)} is not an existing file, an http(s) URL or a data: URL")
    return PIL.ImageOps.exif_transpose(image).convert("RGB")


# ---- input normalisation --------------------------------------------------------------------------
def flatten_images(images: ImageInput) -> list:
    """Flatten a single image, a list, nested per-sample lists or a 4-D batch into a list of single images."""
    if isinstance(images, (str, os.PathLike)):
        return [load_image(images)]
    if isinstance(images, PIL.Image.Image):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 3:
            return [images]
        if images.ndim == 4:
            return list(images)
        hint = " (for a greyscale image add a channel axis, e.g. arr[..., None], or pass a PIL 'L' image)" \
            if images.ndim == 2 else ""
        raise ValueError(f"an image array must be 3-D (H, W, C) / (C, H, W) or 4-D for a batch, "
                         f"got shape {tuple(images.shape)}{hint}")
    if isinstance(images, (list, tuple)):
        flat = []
        for item in images:
            if isinstance(item, (int, float, np.number, bool)):
                raise TypeError("images must be PIL images, numpy arrays, torch tensors, paths or URLs (or lists of "
                                f"them), got a list of {type(item).__name__}: pass the pixels as a numpy array")
            flat.extend(flatten_images(item))
        return flat
    raise TypeError("images must be PIL images, numpy arrays, torch tensors, paths or URLs (or lists of them), "
                    f"got {type(images).__name__}")


def _channel_axis(image: np.ndarray, input_data_format: str | None) -> int:
    """0 for (C, H, W), 2 for (H, W, C); the channel count must be 1, 3 or 4."""
    if input_data_format is not None:
        if input_data_format not in ("channels_first", "channels_last"):
            raise ValueError("input_data_format must be 'channels_first' or 'channels_last', "
                             f"got {input_data_format!r}")
        return 0 if input_data_format == "channels_first" else 2
    first, last = image.shape[0] in (1, 3, 4), image.shape[2] in (1, 3, 4)
    if first and last:
        raise ValueError(f"cannot tell the channel axis of an image of shape {image.shape}: both the first and last "
                         "axis could be channels; pass input_data_format='channels_first' or 'channels_last'")
    if first:
        return 0
    if last:
        return 2
    raise ValueError(f"image of shape {image.shape} has no channel axis of size 1, 3 or 4 (first or last)")


def _convert_rgb_pil(image: PIL.Image.Image) -> np.ndarray:
    """RGB (H, W, 3) uint8; transparency is composited onto white."""
    return np.array(rgb_pil(image))


def _convert_rgb_array(image: np.ndarray) -> np.ndarray:
    """(H, W, C) with C in 1/3/4 -> (H, W, 3): grey repeated, alpha composited onto white."""
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 4:
        is_float = np.issubdtype(image.dtype, np.floating)
        if is_float and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(f"an RGBA float image must be in [0, 1] to composite its alpha, got "
                             f"[{image.min()}, {image.max()}]")
        white = 1.0 if is_float else 255
        alpha = image[..., 3:4] / white
        blended = alpha * image[..., :3] + (1 - alpha) * white
        return blended.astype(image.dtype) if is_float else np.round(blended).astype(image.dtype)
    return image


def to_channels_first(image: Any, do_convert_rgb: bool, input_data_format: str | None = None) -> np.ndarray:
    """One PIL image / array / tensor -> (C, H, W) numpy array, optionally converted to RGB."""
    if isinstance(image, PIL.Image.Image):
        array = _convert_rgb_pil(image) if do_convert_rgb else np.array(image)
        return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = (image.float() if image.dtype == torch.bfloat16 else image).numpy()
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        raise ValueError(f"expected one image as a 3-D array, got {type(image).__name__} "
                         f"of shape {getattr(image, 'shape', None)}")
    numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    if image.dtype == np.bool_ or not numeric:
        raise ValueError(f"image arrays must hold integers or floats, got dtype {image.dtype}")
    axis = _channel_axis(image, input_data_format)
    hwc = np.moveaxis(image, axis, -1)
    if do_convert_rgb:
        hwc = _convert_rgb_array(hwc)
    return np.moveaxis(hwc, -1, 0)


# ---- the per-image transforms (all on (C, H, W) numpy arrays) -------------------------------------
def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """Multiply in float64, return float32 (the rounding transformers uses)."""
    return (image.astype(np.float64) * scale).astype(np.float32)


def _needs_rescale_for_pil(image: np.ndarray) -> bool:
    """Pillow holds uint8: floats in [0, 1] are scaled up (and back down after resizing)."""
    if image.dtype == np.uint8:
        return False
    if np.allclose(image, image.astype(int)):
        if image.min() >= 0 and image.max() <= 255:
            return False
        raise ValueError(f"cannot resize an image with values outside [0, 255]: got [{image.min()}, {image.max()}]")
    if image.min() >= 0 and image.max() <= 1:
        return True
    raise ValueError(f"cannot resize a float image with values outside [0, 1]: got [{image.min()}, {image.max()}]")


def resize_output_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """(new_height, new_width) for a size dict: shortest_edge (optionally with longest_edge) or height/width."""
    if "shortest_edge" in size and "longest_edge" in size:
        short_target, long_limit = size["shortest_edge"], size["longest_edge"]
        short, long = min(height, width), max(height, width)
        raw = None
        if long / short * short_target > long_limit:
            raw = long_limit * short / long
            short_target = int(round(raw))
        if short == short_target:
            return height, width
        other = int((raw if raw is not None else short_target) * long / short)
        return (other, short_target) if width < height else (short_target, other)
    if "shortest_edge" in size:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise ValueError(f"size must have 'shortest_edge' (optionally with 'longest_edge') or 'height' and 'width', "
                     f"got {size}")


def resize(image: np.ndarray, size: dict[str, int], resample: int | None) -> np.ndarray:
    """Resize a (C, H, W) array through Pillow, as transformers' PIL backend does."""
    resample = BILINEAR if resample is None else int(resample)
    new_height, new_width = resize_output_size(image.shape[1], image.shape[2], size)
    if new_height < 1 or new_width < 1:
        raise ValueError(f"resizing a {image.shape[1]}x{image.shape[2]} image to {size} gives an empty "
                         f"{new_height}x{new_width} image")
    hwc = np.moveaxis(image, 0, -1)
    hwc = hwc[..., 0] if hwc.shape[-1] == 1 else hwc
    scaled = _needs_rescale_for_pil(hwc)
    if scaled:
        hwc = rescale(hwc, 255)
    pil = PIL.Image.fromarray(hwc.astype(np.uint8))
    out = np.array(pil.resize((new_width, new_height), resample=resample))
    out = out[..., None] if out.ndim == 2 else out
    out = np.moveaxis(out, -1, 0)
    return rescale(out, 1 / 255) if scaled else out


def center_crop(image: np.ndarray, crop_size: dict[str, int]) -> np.ndarray:
    """Crop the center (height, width) of a (C, H, W) array; images smaller than that are zero-padded."""
    if "height" not in crop_size or "width" not in crop_size:
        raise ValueError(f"crop_size must have 'height' and 'width', got {crop_size}")
    crop_h, crop_w = int(crop_size["height"]), int(crop_size["width"])
    height, width = image.shape[1:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return image[:, top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros_like(image, shape=(image.shape[0], new_h, new_w))
    pad_top, pad_left = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[:, pad_top:pad_top + height, pad_left:pad_left + width] = image
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def normalize(image: np.ndarray, mean: Sequence[float] | float, std: Sequence[float] | float) -> np.ndarray:
    """(image - mean) / std per channel, in float32 (or the image's float dtype)."""
    channels = image.shape[0]
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(np.float32)
    mean = list(mean) if isinstance(mean, (list, tuple)) else [mean] * channels
    std = list(std) if isinstance(std, (list, tuple)) else [std] * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"the image has {channels} channel(s) but image_mean has {len(mean)} and image_std "
                         f"{len(std)} values; keep do_convert_rgb=True for grey, RGBA or palette images")
    mean_arr, std_arr = np.array(mean, dtype=image.dtype), np.array(std, dtype=image.dtype)
    return ((image.T - mean_arr) / std_arr).T


def value_table(channels: int, do_rescale: bool, rescale_factor: float | None, do_normalize: bool,
                mean: Sequence[float] | float | None, std: Sequence[float] | float | None) -> np.ndarray | None:
    """(C, 256) float32: what rescale then normalize make of each uint8 value in each channel, computed by
    those same functions, so that a lookup gives bit-identical pixel values; None when neither is on."""
    if not (do_rescale or do_normalize):
        return None
    values = np.tile(np.arange(256, dtype=np.uint8), (channels, 1, 1))  # (C, 1, 256)
    if do_rescale:
        values = rescale(values, rescale_factor)
    if do_normalize:
        values = normalize(values, mean, std)
    return values[:, 0].astype(np.float32, copy=False)  # (C, 256)


# ---- size dicts --------------------------------------------------------------------------------
_SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"}, {"longest_edge"})


def size_dict(size: Any, *, default_to_square: bool, name: str = "size") -> dict[str, int]:
    """Old config forms (an int, a (h, w) pair) -> a size dict, as transformers reads them."""
    if isinstance(size, dict):
        out = dict(size)
    elif isinstance(size, int):
        out = {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        out = {"height": int(size[0]), "width": int(size[1])}
    else:
        raise ValueError(f"{name} must be a dict, an int or a (height, width) pair, got {size!r}")
    if set(out) not in _SIZE_KEYS:
        raise ValueError(f"{name} must have one of the key sets {[sorted(k) for k in _SIZE_KEYS]}, got {sorted(out)}")
    for key, value in out.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}[{key!r}] must be a positive int, got {value!r}")
    return {k: int(v) for k, v in out.items()}


# ---- the processor ------------------------------------------------------------------------------
class CLIPImageProcessor:
    """Resize + center-crop + rescale + normalize, with CLIP defaults; `__call__` returns `pixel_values`."""

    model_input_names = ["pixel_values"]
    valid_kwargs = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std", "do_convert_rgb", "return_tensors", "data_format",
                    "input_data_format")

    def __init__(self, do_resize: bool = True, size: dict | int | None = None, resample: int = BICUBIC,
                 do_center_crop: bool = True, crop_size: dict | int | None = None, do_rescale: bool = True,
                 rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean: Sequence[float] | float | None = None, image_std: Sequence[float] | float | None = None,
                 do_convert_rgb: bool = True, **extra: Any):
        self.do_resize = do_resize
        self.size = size_dict(size if size is not None else {"shortest_edge": 224}, default_to_square=False)
        self.resample = resample
        self.do_center_crop = do_center_crop
        self.crop_size = size_dict(crop_size if crop_size is not None else {"height": 224, "width": 224},
                                   default_to_square=True, name="crop_size")
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if isinstance(image_mean, (list, tuple)) else \
            (image_mean if image_mean is not None else list(OPENAI_CLIP_MEAN))
        self.image_std = list(image_std) if isinstance(image_std, (list, tuple)) else \
            (image_std if image_std is not None else list(OPENAI_CLIP_STD))
        self.do_convert_rgb = do_convert_rgb
        extra.pop("image_processor_type", None)
        extra.pop("processor_class", None)
        self._extra = extra  # unknown config keys, kept so that save_pretrained writes them back

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, sort_keys=True)}"

    def __call__(self, images: ImageInput, **kwargs: Any) -> BatchFeature:
        return self.preprocess(images, **kwargs)

    def preprocess(self, images: ImageInput, *, do_resize: bool | None = None, size: dict | int | None = None,
                   resample: int | None = None, do_center_crop: bool | None = None,
                   crop_size: dict | int | None = None, do_rescale: bool | None = None,
                   rescale_factor: float | None = None, do_normalize: bool | None = None,
                   image_mean: Sequence[float] | float | None = None, image_std: Sequence[float] | float | None = None,
                   do_convert_rgb: bool | None = None, return_tensors: str | None = None,
                   data_format: str = "channels_first", input_data_format: str | None = None) -> BatchFeature:
        """Images -> BatchFeature(pixel_values): (N, 3, H, W) with return_tensors, else a list of arrays."""
        pick = lambda value, default: default if value is None else value  # noqa: E731
        do_resize, do_center_crop = pick(do_resize, self.do_resize), pick(do_center_crop, self.do_center_crop)
        do_rescale, do_normalize = pick(do_rescale, self.do_rescale), pick(do_normalize, self.do_normalize)
        do_convert_rgb = pick(do_convert_rgb, self.do_convert_rgb)
        size = size_dict(pick(size, self.size), default_to_square=False)
        crop_size = size_dict(pick(crop_size, self.crop_size), default_to_square=True, name="crop_size")
        resample = pick(resample, self.resample)
        rescale_factor = pick(rescale_factor, self.rescale_factor)
        image_mean, image_std = pick(image_mean, self.image_mean), pick(image_std, self.image_std)
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        if do_rescale and rescale_factor is None:
            raise ValueError("do_rescale=True needs a rescale_factor")
        if do_normalize and (image_mean is None or image_std is None):
            raise ValueError("do_normalize=True needs image_mean and image_std")

        flat = flatten_images(images)
        if not flat:
            raise ValueError("no images were given (an empty list)")
        pixel_values, table = [], None
        for image in flat:
            pil = as_rgb_pil(image, do_convert_rgb)
            if pil is not None:  # the fast path: Pillow, then one table lookup per channel
                if table is None:
                    table = value_table(3, do_rescale, rescale_factor, do_normalize, image_mean, image_std)
                array = self._pil_pixels(pil, do_resize, size, resample, do_center_crop, crop_size, table)
                pixel_values.append(np.moveaxis(array, 0, -1) if data_format == "channels_last" else array)
                continue
            array = to_channels_first(image, do_convert_rgb, input_data_format)  # (C, H, W)
            if do_resize:
                array = resize(array, size, resample)
            if do_center_crop:
                array = center_crop(array, crop_size)
            if do_rescale:
                array = rescale(array, rescale_factor)
            if do_normalize:
                array = normalize(array, image_mean, image_std)
            if data_format == "channels_last":
                array = np.moveaxis(array, 0, -1)
            pixel_values.append(array)
        if return_tensors is not None and len({a.shape for a in pixel_values}) > 1:
            raise ValueError(f"cannot stack images of different processed shapes {[a.shape for a in pixel_values]}; "
                             "use do_center_crop or a fixed size, or return_tensors=None")
        return BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)

    @staticmethod
    def _pil_pixels(image: PIL.Image.Image, do_resize: bool, size: dict[str, int], resample: int | None,
                    do_center_crop: bool, crop_size: dict[str, int], table: np.ndarray | None) -> np.ndarray:
        """resize in Pillow, center crop as a view, then rescale + normalize by one table lookup: (3, H, W)."""
        if do_resize:
            new_height, new_width = resize_output_size(image.height, image.width, size)
            if new_height < 1 or new_width < 1:
                raise ValueError(f"resizing a {image.height}x{image.width} image to {size} gives an empty "
                                 f"{new_height}x{new_width} image")
            image = resize_pil(image, new_height, new_width, BILINEAR if resample is None else int(resample))
        array = np.moveaxis(np.asarray(image), -1, 0)  # (3, H, W) uint8, a view of Pillow's copy
        if do_center_crop:
            array = center_crop(array, crop_size)  # a view (padded copy when the crop is larger)
        return np.array(array) if table is None else lookup(array, table)  # (3, h, w)

    # ---- config ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The preprocessor_config.json content, in transformers' key names."""
        out = copy.deepcopy(self._extra)
        out.update({
            "crop_size": dict(self.crop_size), "do_center_crop": self.do_center_crop,
            "do_convert_rgb": self.do_convert_rgb, "do_normalize": self.do_normalize,
            "do_rescale": self.do_rescale, "do_resize": self.do_resize, "image_mean": self.image_mean,
            "image_processor_type": "CLIPImageProcessor", "image_std": self.image_std,
            "resample": self.resample, "rescale_factor": self.rescale_factor, "size": dict(self.size),
        })
        return out

    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> "CLIPImageProcessor":
        if cls is CLIPImageProcessor and str(config.get("image_processor_type") or "").startswith("LlavaImageProcessor"):
            from llavakit.processing.image_llava import LlavaImageProcessor  # keeps do_pad (pad to square)

            return LlavaImageProcessor(**{**config, **overrides})
        return cls(**{**config, **overrides})

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **overrides: Any) -> "CLIPImageProcessor":
        """Read the `image_processor` entry of processor_config.json, else preprocessor_config.json."""
        hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
                   subfolder=subfolder, force_download=force_download)
        return cls.from_dict(load_image_processor_dict(path_or_repo_id, **hub), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write preprocessor_config.json; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def load_image_processor_dict(path_or_repo_id: str | os.PathLike, **hub: Any) -> dict[str, Any]:
    """The image processor config: processor_config.json's `image_processor` (transformers 5) wins over
    preprocessor_config.json (older checkpoints), as in transformers."""
    processor_file = resolve_file(path_or_repo_id, PROCESSOR_NAME, required=False, **hub)
    if processor_file is not None:
        nested = read_json(processor_file).get("image_processor")
        if isinstance(nested, dict):
            return nested
    config_file = resolve_file(path_or_repo_id, IMAGE_PROCESSOR_NAME, required=False, **hub)
    if config_file is None:
        raise FileNotFoundError(f"no image processor config in {os.fspath(path_or_repo_id)}: expected "
                                f"{IMAGE_PROCESSOR_NAME} or an 'image_processor' entry in {PROCESSOR_NAME}")
    return read_json(config_file)
