"""Video processors: videos -> `pixel_values_videos` (videos, frames, 3, H, W), the numbers transformers gives.

transformers' video processors work on torch tensors (resize with antialiased interpolation on uint8
frames, then one fused rescale + normalize), so these do the same tensor operations, frame batch by
frame batch. Paths and URLs are decoded by `video.load_video`, sampling frames when asked to.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from llavakit.loading.hub import read_json, resolve_file
from llavakit.processing.batch import BatchFeature
from llavakit.processing.image import BICUBIC, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resize_output_size, size_dict
from llavakit.processing.video import VideoMetadata, flatten_videos, load_video, sample_indices

VIDEO_PROCESSOR_NAME = "video_preprocessor_config.json"
IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
PROCESSOR_NAME = "processor_config.json"
NEAREST, BILINEAR = 0, 2
_MODES = {NEAREST: "nearest-exact", BILINEAR: "bilinear", BICUBIC: "bicubic"}  # Pillow resample id -> torch mode


# ---- tensor transforms on (T, C, H, W) frames ------------------------------------------------------
def _native_uint8(mode: str) -> bool:
    """Whether torch resizes uint8 frames directly (as torchvision does on this CPU), not through float."""
    if mode == "bilinear":
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or \
            os.uname().machine in ("aarch64", "arm64")
    return True


def resize_frames(frames: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """Antialiased resize of (T, C, H, W) frames to (height, width), keeping the dtype (uint8 rounds)."""
    if resample not in _MODES:
        raise ValueError(f"video resample must be one of {sorted(_MODES)} (nearest, bilinear, bicubic), "
                         f"got {resample!r}")
    if frames.shape[-2:] == (height, width):
        return frames
    mode = _MODES[resample]
    antialias = mode != "nearest-exact"
    align = None if mode == "nearest-exact" else False
    dtype = frames.dtype
    native = dtype in (torch.float32, torch.float64) or (dtype == torch.uint8 and (
        mode == "nearest-exact" or (frames.device.type == "cpu" and _native_uint8(mode))))
    if native:
        return F.interpolate(frames, size=(height, width), mode=mode, align_corners=align, antialias=antialias)
    out = F.interpolate(frames.float(), size=(height, width), mode=mode, align_corners=align, antialias=antialias)
    if mode == "bicubic" and dtype == torch.uint8:
        out = out.clamp_(0, 255)
    if not dtype.is_floating_point:
        out = out.round_()
    return out.to(dtype)


def center_crop_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The center (height, width) of (T, C, H, W) frames; smaller frames are zero-padded first."""
    frame_h, frame_w = frames.shape[-2:]
    if height > frame_h or width > frame_w:
        pad_w, pad_h = max(width - frame_w, 0), max(height - frame_h, 0)
        frames = F.pad(frames, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))  # left, right, top, bottom
        frame_h, frame_w = frames.shape[-2:]
        if (frame_h, frame_w) == (height, width):
            return frames
    top, left = int((frame_h - height) / 2.0), int((frame_w - width) / 2.0)
    return frames[..., top:top + height, left:left + width]


def rescale_and_normalize(frames: torch.Tensor, do_rescale: bool, rescale_factor: float, do_normalize: bool,
                          mean: Sequence[float] | float, std: Sequence[float] | float) -> torch.Tensor:
    """float32 (frames * factor - mean) / std, with the factor folded into mean and std as transformers does."""
    if do_normalize:
        mean_t, std_t = torch.tensor(mean), torch.tensor(std)  # float32
        if do_rescale:
            mean_t, std_t = mean_t * (1.0 / rescale_factor), std_t * (1.0 / rescale_factor)
        channels = frames.shape[-3]
        mean_t, std_t = mean_t.reshape(-1, 1, 1), std_t.reshape(-1, 1, 1)
        if mean_t.shape[0] not in (1, channels) or std_t.shape[0] not in (1, channels):
            raise ValueError(f"the video has {channels} channel(s) but image_mean has {mean_t.shape[0]} and "
                             f"image_std {std_t.shape[0]} values")
        return (frames.to(torch.float32) - mean_t) / std_t
    if do_rescale:
        return frames * rescale_factor
    return frames


# ---- inputs -----------------------------------------------------------------------------------------
def _frames_tensor(video: Any, input_data_format: str | None, do_convert_rgb: bool) -> torch.Tensor:
    """One video (4-D array/tensor or list of frames) -> (T, C, H, W) tensor, RGB when asked."""
    if isinstance(video, (list, tuple)):  # frames: PIL images (any mode -> RGB), arrays or tensors
        frames = [np.asarray(f if f.mode == "RGB" else f.convert("RGB")) if isinstance(f, PIL.Image.Image)
                  else f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f) for f in video]
        if len({f.shape for f in frames}) > 1:
            raise ValueError(f"the frames of one video must share one shape, got {sorted({f.shape for f in frames})}")
        video = np.stack(frames)
    tensor = torch.from_numpy(np.ascontiguousarray(video)) if isinstance(video, np.ndarray) else video.detach().cpu()
    if tensor.ndim != 4:
        raise ValueError(f"a video must be 4-D (frames, height, width, channels), got shape {tuple(tensor.shape)}")
    if tensor.shape[0] == 0:
        raise ValueError("a video has zero frames")
    if tensor.dtype == torch.bool or tensor.dtype.is_complex:
        raise ValueError(f"video arrays must hold integers or floats, got dtype {tensor.dtype}")
    if input_data_format is None:
        first, last = tensor.shape[1] in (1, 3), tensor.shape[3] in (1, 3)
        if first and last:
            raise ValueError(f"cannot tell the channel axis of a video of shape {tuple(tensor.shape)}; pass "
                             "input_data_format='channels_first' or 'channels_last'")
        if not (first or last):
            raise ValueError(f"a video of shape {tuple(tensor.shape)} has no channel axis of size 1 or 3 (axis 1 or "
                             "the last); expected (frames, height, width, 3)")
        input_data_format = "channels_first" if first else "channels_last"
    if input_data_format not in ("channels_first", "channels_last"):
        raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}")
    if input_data_format == "channels_last":
        tensor = tensor.permute(0, 3, 1, 2)
    tensor = tensor.contiguous()
    if do_convert_rgb and tensor.shape[1] == 1:
        tensor = tensor.repeat(1, 3, 1, 1)  # greyscale -> RGB
    return tensor


# ---- the processor ------------------------------------------------------------------------------
class VideoProcessor:
    """Per frame: resize, optional center crop, rescale + normalize; `__call__` returns pixel_values_videos."""

    model_input_names = ["pixel_values_videos"]
    valid_kwargs = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std", "do_convert_rgb", "do_sample_frames", "num_frames",
                    "fps", "video_metadata", "return_metadata", "return_tensors", "input_data_format",
                    "data_format", "device")
    defaults: dict[str, Any] = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                    do_center_crop=True)

    def __init__(self, do_resize: bool = True, size: dict | int | None = None, resample: int = BICUBIC,
                 do_center_crop: bool | None = None, crop_size: dict | int | None = None, do_rescale: bool = True,
                 rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean: Sequence[float] | float | None = None, image_std: Sequence[float] | float | None = None,
                 do_convert_rgb: bool = True, do_sample_frames: bool = False, num_frames: int | None = None,
                 fps: float | None = None, return_metadata: bool = False, **extra: Any):
        defaults = self.defaults
        self.do_resize = do_resize
        self.size = size_dict(size if size is not None else defaults["size"], default_to_square=False)
        self.resample = resample
        self.do_center_crop = defaults["do_center_crop"] if do_center_crop is None else do_center_crop
        crop_size = crop_size if crop_size is not None else defaults["crop_size"]
        self.crop_size = None if crop_size is None else size_dict(crop_size, default_to_square=True, name="crop_size")
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean) if isinstance(image_mean, (list, tuple)) else \
            (image_mean if image_mean is not None else list(OPENAI_CLIP_MEAN))
        self.image_std = list(image_std) if isinstance(image_std, (list, tuple)) else \
            (image_std if image_std is not None else list(OPENAI_CLIP_STD))
        self.do_convert_rgb = do_convert_rgb
        self.do_sample_frames = do_sample_frames
        self.num_frames = num_frames
        self.fps = fps
        self.return_metadata = return_metadata
        for key in ("video_processor_type", "image_processor_type", "processor_class"):
            extra.pop(key, None)
        self._extra = extra  # unknown config keys, kept so that save_pretrained writes them back

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2, sort_keys=True)}"

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def sample_frames(self, metadata: VideoMetadata, num_frames: int | None = None,
                      fps: float | None = None) -> np.ndarray:
        """Uniform frame indices for one video: num_frames of them, or fps per second (defaults: the config's)."""
        if num_frames is not None and fps is not None:
            raise ValueError("num_frames and fps are mutually exclusive: pass one of them")
        num_frames = self.num_frames if num_frames is None else num_frames
        fps = self.fps if fps is None else fps
        return sample_indices(metadata.total_num_frames, num_frames, fps, metadata.fps)

    def fetch(self, videos: Any, *, do_sample_frames: bool = False, num_frames: int | None = None,
              fps: float | None = None, video_metadata: Any = None) -> tuple[list[Any], list[VideoMetadata]]:
        """Flatten the input and decode paths/URLs; with do_sample_frames keep only the sampled frames."""
        flat = flatten_videos(videos)
        if not flat:
            raise ValueError("no videos were given (an empty list)")
        metadata_list = _metadata_list(video_metadata, flat)
        pick = (lambda metadata: self.sample_frames(metadata, num_frames, fps)) if do_sample_frames else None
        out, metas = [], []
        for video, metadata in zip(flat, metadata_list):
            if isinstance(video, (str, os.PathLike)):
                frames, metadata = load_video(video, sample_indices_fn=pick)
            else:
                frames = video
                if metadata is None:
                    metadata = VideoMetadata(total_num_frames=len(video), frames_indices=list(range(len(video))))
                if pick is not None:
                    if isinstance(video, (list, tuple)):
                        raise ValueError("sampling frames from a list of frames is not supported: pass the video "
                                         "as one 4-D array, or do_sample_frames=False")
                    indices = pick(metadata)
                    frames = video[torch.as_tensor(indices) if isinstance(video, torch.Tensor) else indices]
                    metadata.frames_indices = [int(i) for i in indices]
            out.append(frames)
            metas.append(metadata)
        return out, metas

    def preprocess(self, videos: Any, *, do_resize: bool | None = None, size: dict | int | None = None,
                   resample: int | None = None, do_center_crop: bool | None = None,
                   crop_size: dict | int | None = None, do_rescale: bool | None = None,
                   rescale_factor: float | None = None, do_normalize: bool | None = None,
                   image_mean: Sequence[float] | float | None = None, image_std: Sequence[float] | float | None = None,
                   do_convert_rgb: bool | None = None, do_sample_frames: bool | None = None,
                   num_frames: int | None = None, fps: float | None = None, video_metadata: Any = None,
                   return_metadata: bool | None = None, return_tensors: str | None = None,
                   input_data_format: str | None = None, data_format: str = "channels_first",
                   device: str | torch.device | None = None) -> BatchFeature:
        """Videos -> BatchFeature(pixel_values_videos): (B, T, 3, H, W) with return_tensors, else a list."""
        pick = lambda value, default: default if value is None else value  # noqa: E731
        do_resize, do_center_crop = pick(do_resize, self.do_resize), pick(do_center_crop, self.do_center_crop)
        do_rescale, do_normalize = pick(do_rescale, self.do_rescale), pick(do_normalize, self.do_normalize)
        do_convert_rgb = pick(do_convert_rgb, self.do_convert_rgb)
        do_sample_frames = pick(do_sample_frames, self.do_sample_frames)
        return_metadata = pick(return_metadata, self.return_metadata)
        size = size_dict(pick(size, self.size), default_to_square=False)
        crop_size = pick(crop_size, self.crop_size)
        resample, rescale_factor = pick(resample, self.resample), pick(rescale_factor, self.rescale_factor)
        image_mean, image_std = pick(image_mean, self.image_mean), pick(image_std, self.image_std)
        if data_format != "channels_first":
            raise ValueError("video processors return channels-first frames only (data_format='channels_first')")
        if do_center_crop and crop_size is None:
            raise ValueError("do_center_crop=True needs a crop_size")
        if do_center_crop:
            crop_size = size_dict(crop_size, default_to_square=True, name="crop_size")
        if not ({"height", "width"} <= set(size) or set(size) == {"shortest_edge"}):
            raise ValueError(f"video size must be {{'height', 'width'}} or {{'shortest_edge'}}, got {size}")
        if (num_frames is not None or fps is not None) and not do_sample_frames:
            raise ValueError("num_frames / fps are only used with do_sample_frames=True")

        videos, metadata = self.fetch(videos, do_sample_frames=do_sample_frames, num_frames=num_frames, fps=fps,
                                      video_metadata=video_metadata)
        pixel_values = []
        for video in videos:
            frames = _frames_tensor(video, input_data_format, do_convert_rgb)  # (T, C, H, W)
            if device is not None:
                frames = frames.to(device)
            if do_resize:
                height, width = resize_output_size(*frames.shape[-2:], size)
                frames = resize_frames(frames, height, width, int(resample))
            if do_center_crop:
                frames = center_crop_frames(frames, crop_size["height"], crop_size["width"])
            pixel_values.append(rescale_and_normalize(frames, do_rescale, rescale_factor, do_normalize,
                                                      image_mean, image_std))  # (T, 3, h, w)
        if return_tensors is not None and len({tuple(v.shape) for v in pixel_values}) > 1:
            raise ValueError(f"cannot stack videos of different processed shapes "
                             f"{[tuple(v.shape) for v in pixel_values]} (frames, channels, height, width): sample "
                             "the same number of frames from each (num_frames=...), or return_tensors=None")
        data: dict[str, Any] = {"pixel_values_videos": pixel_values}
        if return_metadata:
            data["video_metadata"] = metadata
        return BatchFeature(data, tensor_type=return_tensors)

    # ---- config ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The video_preprocessor_config.json content, in transformers' key names."""
        out = copy.deepcopy(self._extra)
        out.update({
            "crop_size": None if self.crop_size is None else dict(self.crop_size),
            "do_center_crop": self.do_center_crop, "do_convert_rgb": self.do_convert_rgb,
            "do_normalize": self.do_normalize, "do_rescale": self.do_rescale, "do_resize": self.do_resize,
            "do_sample_frames": self.do_sample_frames, "fps": self.fps, "image_mean": self.image_mean,
            "image_std": self.image_std, "num_frames": self.num_frames, "resample": self.resample,
            "rescale_factor": self.rescale_factor, "return_metadata": self.return_metadata, "size": dict(self.size),
            "video_processor_type": type(self).__name__,
        })
        return {k: v for k, v in out.items() if v is not None}  # transformers leaves unset keys out

    @classmethod
    def from_dict(cls, config: dict[str, Any], **overrides: Any) -> "VideoProcessor":
        return cls(**{**config, **overrides})

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, *, revision: str | None = None,
                        local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                        subfolder: str | None = None, force_download: bool = False,
                        **overrides: Any) -> "VideoProcessor":
        hub = dict(revision=revision, local_files_only=local_files_only, cache_dir=cache_dir, token=token,
                   subfolder=subfolder, force_download=force_download)
        return cls.from_dict(load_video_processor_dict(path_or_repo_id, **hub), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write video_preprocessor_config.json; returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, VIDEO_PROCESSOR_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


class LlavaOnevisionVideoProcessor(VideoProcessor):
    """OneVision's frames: resized straight to 384 x 384, no crop, CLIP mean/std."""

    defaults = dict(size={"height": 384, "width": 384}, crop_size=None, do_center_crop=None)


class LlavaNextVideoVideoProcessor(VideoProcessor):
    """LLaVA-NeXT-Video's frames: shortest edge 224, center crop 224 x 224, CLIP mean/std."""

    defaults = dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True)


VIDEO_PROCESSOR_CLASSES = {"LlavaOnevisionVideoProcessor": LlavaOnevisionVideoProcessor,
                           "LlavaNextVideoVideoProcessor": LlavaNextVideoVideoProcessor}


def _metadata_list(video_metadata: Any, videos: list[Any]) -> list[VideoMetadata | None]:
    """One VideoMetadata (or None) per video, from a dict, a VideoMetadata or a (nested) list of them."""
    if video_metadata is None:
        return [None] * len(videos)
    items = video_metadata if isinstance(video_metadata, (list, tuple)) else [video_metadata]
    if items and isinstance(items[0], (list, tuple)):
        items = [m for sub in items for m in sub]
    out = [m if isinstance(m, VideoMetadata) else VideoMetadata(**m) for m in items]
    if len(out) != len(videos):
        raise ValueError(f"got {len(videos)} videos but {len(out)} video_metadata entries; pass one per video")
    return out


def load_video_processor_dict(path_or_repo_id: str | os.PathLike, **hub: Any) -> dict[str, Any]:
    """The video processor config, where transformers looks: processor_config.json's `video_processor`,
    else video_preprocessor_config.json, else preprocessor_config.json (older Hub repos share one file)."""
    processor_file = resolve_file(path_or_repo_id, PROCESSOR_NAME, required=False, **hub)
    if processor_file is not None:
        nested = read_json(processor_file).get("video_processor")
        if isinstance(nested, dict):
            return nested
    for name in (VIDEO_PROCESSOR_NAME, IMAGE_PROCESSOR_NAME):
        path = resolve_file(path_or_repo_id, name, required=False, **hub)
        if path is not None:
            return read_json(path)
    raise FileNotFoundError(f"no video processor config in {os.fspath(path_or_repo_id)}: expected "
                            f"{VIDEO_PROCESSOR_NAME}, {IMAGE_PROCESSOR_NAME} or a 'video_processor' entry in "
                            f"{PROCESSOR_NAME}")
