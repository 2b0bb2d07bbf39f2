"""Video files -> frames: decoding (PyAV or torchcodec), uniform frame sampling and video input checks.

Sampling follows transformers: `num_frames` picks indices i * total // num_frames; `fps` first turns
the target rate into a frame count (at least one). Decoding gives (T, H, W, 3) uint8 RGB frames, the same
pixels as transformers' torchcodec loader on H.264 mp4 (both go through FFmpeg's RGB conversion).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import urllib.request
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch

INSTALL_HINT = 'pip install "llavakit[video]"'
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
BACKENDS = ("pyav", "torchcodec")


@dataclasses.dataclass
class VideoMetadata:
    """What the container says about a video, plus the frame indices that were kept."""

    total_num_frames: int
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    video_backend: str | None = None
    frames_indices: list[int] | None = None


# ---- sampling -----------------------------------------------------------------------------------
def sample_indices(total_num_frames: int, num_frames: int | None = None, fps: float | None = None,
                   video_fps: float | None = None) -> np.ndarray:
    """Uniform frame indices: `num_frames` of them, or `fps` per second of video, or all frames."""
    if num_frames is not None and fps is not None:
        raise ValueError("num_frames and fps are mutually exclusive: pass one of them")
    if total_num_frames < 1:
        raise ValueError("the video has no frames to sample")
    if num_frames is None and fps is not None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if not video_fps:
            raise ValueError(f"cannot sample fps={fps} frames per second: the video's own frame rate is unknown; "
                             "pass num_frames instead")
        num_frames = max(1, int(total_num_frames / video_fps * fps))
    if num_frames is None:
        return np.arange(total_num_frames, dtype=int)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if num_frames > total_num_frames:
        raise ValueError(f"cannot sample num_frames={num_frames} from a video of {total_num_frames} frames; "
                         "ask for fewer frames (or a lower fps)")
    return np.arange(num_frames, dtype=int) * total_num_frames // num_frames


# ---- decoding -----------------------------------------------------------------------------------
def _describe(source: Any) -> str:
    text = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    return text if len(text) <= 80 else text[:77] + "..."


def _open_source(source: str | os.PathLike, timeout: float, max_bytes: int) -> str | io.BytesIO:
    """A local path stays a path; an http(s) URL is downloaded into memory."""
    text = os.fspath(source)
    if text.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(text, timeout=timeout) as response:  # noqa: S310 (user-given URL)
                data = response.read(max_bytes + 1)
        except OSError as err:
            raise ValueError(f"cannot download video {_describe(text)}: {err}") from None
        if len(data) > max_bytes:
            raise ValueError(f"video at {_describe(text)} is larger than {max_bytes} bytes")
        return io.BytesIO(data)
    if text.startswith("file://"):
        text = text[len("file://"):]
    if not os.path.isfile(text):
        raise ValueError(f"video source {_describe(text)} is not an existing file or an http(s) URL")
    return text


def _read_pyav(file: str | io.BytesIO, source: Any, pick: Callable[[VideoMetadata], np.ndarray]
               ) -> tuple[np.ndarray, VideoMetadata]:
    try:
        import av
    except ImportError:
        raise ImportError(f"decoding video files needs PyAV (or torchcodec): {INSTALL_HINT}") from None
    try:
        container = av.open(file)
    except (av.error.FFmpegError, OSError, ValueError) as err:
        raise ValueError(f"cannot open {_describe(source)} as a video: {err}") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{_describe(source)} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate
        metadata = VideoMetadata(total_num_frames=int(stream.frames), fps=float(rate) if rate else None,
                                 width=stream.width, height=stream.height, video_backend="pyav")
        if metadata.total_num_frames < 1:  # no frame count in the header: count by decoding, then start over
            metadata.total_num_frames = sum(1 for _ in _decode_pyav(container, source))
            if metadata.total_num_frames < 1:
                raise ValueError(f"{_describe(source)} has a video stream with zero frames")
            container.close()
            if isinstance(file, io.BytesIO):
                file.seek(0)
            container = av.open(file)
        if metadata.fps:
            metadata.duration = metadata.total_num_frames / metadata.fps
        indices = pick(metadata)
        wanted, frames = set(int(i) for i in indices), {}
        for i, frame in enumerate(_decode_pyav(container, source)):
            if i > indices[-1]:
                break
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
    missing = sorted(wanted - set(frames))
    if missing:
        raise ValueError(f"{_describe(source)} is truncated or corrupt: its header promises "
                         f"{metadata.total_num_frames} frames but frame {missing[0]} could not be decoded")
    metadata.frames_indices = [int(i) for i in indices]
    return np.stack([frames[int(i)] for i in indices]), metadata


def _decode_pyav(container: Any, source: Any):
    """The container's video frames, with decoder errors turned into one clear ValueError."""
    import av

    try:
        yield from container.decode(video=0)
    except av.error.FFmpegError as err:
        raise ValueError(f"{_describe(source)} is truncated or corrupt: its frames cannot be decoded ({err})") from None


def _read_torchcodec(file: str | io.BytesIO, source: Any, pick: Callable[[VideoMetadata], np.ndarray]
                     ) -> tuple[np.ndarray, VideoMetadata]:
    try:
        from torchcodec.decoders import VideoDecoder
    except (ImportError, RuntimeError, OSError) as err:
        raise ImportError(f"torchcodec cannot be loaded ({err}); install PyAV instead: {INSTALL_HINT}") from None
    try:
        decoder = VideoDecoder(file.getvalue() if isinstance(file, io.BytesIO) else file, seek_mode="exact",
                               num_ffmpeg_threads=0)
    except (RuntimeError, ValueError) as err:
        message = _torchcodec_message(err)
        if "best video stream is unknown" in message:
            raise ValueError(f"{_describe(source)} has no video stream") from None
        raise ValueError(f"cannot open {_describe(source)} as a video: {message}") from None
    info = decoder.metadata
    metadata = VideoMetadata(total_num_frames=int(info.num_frames or 0), fps=info.average_fps, width=info.width,
                             height=info.height, duration=info.duration_seconds, video_backend="torchcodec")
    if metadata.total_num_frames < 1:
        raise ValueError(f"{_describe(source)} has a video stream with zero frames")
    promised = info.num_frames_from_header
    if promised and metadata.total_num_frames < promised:
        raise ValueError(f"{_describe(source)} is truncated or corrupt: its header promises {promised} frames but "
                         f"only {metadata.total_num_frames} are in the file")
    indices = pick(metadata)
    try:
        frames = decoder.get_frames_at(indices=[int(i) for i in indices]).data  # (T, 3, H, W) uint8
    except (RuntimeError, IndexError) as err:
        raise ValueError(f"{_describe(source)} is truncated or corrupt: {_torchcodec_message(err)}") from None
    metadata.frames_indices = [int(i) for i in indices]
    return frames.permute(0, 2, 3, 1).contiguous().numpy(), metadata


def _torchcodec_message(err: Exception) -> str:
    """torchcodec's first error line without its C++ source location."""
    line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return re.sub(r"^\w+, \S+\.cpp:\d+, ", "", line)


def default_backend() -> str:
    """PyAV when installed (it bundles FFmpeg), else torchcodec; ImportError naming the extra if neither is."""
    try:
        import av  # noqa: F401

        return "pyav"
    except ImportError:
        pass
    try:
        import torchcodec.decoders  # noqa: F401

        return "torchcodec"
    except (ImportError, RuntimeError, OSError):
        raise ImportError(f"decoding video files needs PyAV or torchcodec, and neither is installed: "
                          f"{INSTALL_HINT}") from None


def load_video(source: str | os.PathLike | bytes, num_frames: int | None = None, fps: float | None = None,
               backend: str | None = None, sample_indices_fn: Callable[..., np.ndarray] | None = None,
               timeout: float = 30.0, max_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[np.ndarray, VideoMetadata]:
    """Decode a video file, http(s) URL or the file's bytes to ((T, H, W, 3) uint8 RGB frames, metadata).

    Frames are sampled uniformly (`num_frames`, or `fps` per second), all frames by default;
    `sample_indices_fn(metadata)` replaces that choice.
    """
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise TypeError(f"load_video takes a path, an http(s) URL or the file's bytes, got {type(source).__name__}")
    if num_frames is not None and fps is not None:
        raise ValueError("num_frames and fps are mutually exclusive: pass one of them")
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    if isinstance(source, bytes):
        file, source = io.BytesIO(source), f"<{len(source)} bytes of video>"
    else:
        file = _open_source(source, timeout, max_bytes)

    def pick(metadata: VideoMetadata) -> np.ndarray:
        if sample_indices_fn is not None:
            indices = np.asarray(sample_indices_fn(metadata=metadata), dtype=int)
        else:
            indices = sample_indices(metadata.total_num_frames, num_frames, fps, metadata.fps)
        if indices.ndim != 1 or len(indices) == 0:
            raise ValueError(f"no frames were selected from {_describe(source)}")
        if indices.min() < 0 or indices.max() >= metadata.total_num_frames:
            raise ValueError(f"frame indices {indices.tolist()} are outside the video's "
                             f"{metadata.total_num_frames} frames")
        return indices

    read = _read_pyav if backend == "pyav" else _read_torchcodec
    return read(file, source, pick)


# ---- video inputs -------------------------------------------------------------------------------
def _is_frame(item: Any) -> bool:
    return isinstance(item, PIL.Image.Image) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3)


def _is_video(item: Any) -> bool:
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item.ndim == 4
    return isinstance(item, (list, tuple)) and len(item) > 0 and all(_is_frame(f) for f in item)


def flatten_videos(videos: Any) -> list[Any]:
    """One video or a (nested) batch -> a flat list whose items are 4-D arrays/tensors, lists of frames, or
    paths/URLs; a single 3-D frame counts as a one-frame video, a 5-D array as a batch."""
    if isinstance(videos, (str, os.PathLike)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 5:
            return list(videos)
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 3:
            return [videos[None]]
        raise ValueError(f"a video must be a 4-D (frames, height, width, channels) array, got shape "
                         f"{tuple(videos.shape)}")
    if isinstance(videos, PIL.Image.Image):
        return [[videos]]
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            return []
        if _is_video(videos) and all(_is_frame(f) for f in videos):
            return [list(videos)]  # one video given as a list of frames
        flat = []
        for item in videos:
            flat.extend(flatten_videos(item))
        return flat
    raise TypeError("videos must be 4-D arrays or tensors (frames, height, width, channels), lists of PIL frames, "
                    f"or paths/URLs of video files (or lists of them), got {type(videos).__name__}")
