"""Fetch and decode the images and videos a request names, under the server's rules.

data: URLs are decoded in memory; http(s) URLs are fetched with a timeout and a size cap, only from public
addresses (every resolved address is checked, the connection goes to the checked address, and each
redirect is checked again); file:// only under --allowed-local-media-path. Anything else is refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import http.client
import ipaddress
import os
import socket
import ssl
import urllib.parse

import numpy as np
import PIL.Image
import PIL.ImageOps

from llavakit.processing.image import _open_image
from llavakit.serving.schemas import APIError


@dataclasses.dataclass
class MediaLimits:
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images: int = 8  # per request
    max_video_bytes: int = 64 * 1024 * 1024
    max_videos: int = 2  # per request
    num_frames: int = 8  # frames sampled from a video part that does not say (all of a shorter video)
    timeout: float = 10.0  # seconds per remote fetch
    max_redirects: int = 3
    allowed_local_path: str | None = None  # file:// URLs only under this folder


@dataclasses.dataclass
class Image:
    """A decoded RGB image and the hash of its bytes (the image-feature cache key)."""

    pil: PIL.Image.Image
    digest: str


def resolve_host(host: str, port: int) -> list[str]:
    """Every address the host resolves to (a module function so tests can stub DNS)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
    except socket.gaierror as err:
        raise APIError(400, f"cannot resolve media host {host!r}: {err}", "messages") from None


def is_forbidden_address(address: str) -> bool:
    """True for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local


@dataclasses.dataclass
class Video:
    """A video's sampled (T, H, W, 3) uint8 RGB frames and the hash of its bytes and frame choice."""

    frames: "np.ndarray"
    digest: str


def load(url: str, limits: MediaLimits) -> Image:
    """Fetch and decode one image URL, or raise APIError (400 refused/undecodable, 413 too large)."""
    return decode(fetch(url, limits), url, limits)


def load_video(url: str, limits: MediaLimits, num_frames: int | None = None) -> Video:
    """Fetch one video URL (the image rules, with max_video_bytes) and sample num_frames frames from it."""
    from llavakit.processing.video import load_video as decode_video
    from llavakit.processing.video import sample_indices

    data = fetch(url, dataclasses.replace(limits, max_image_bytes=limits.max_video_bytes), kind="video")

    def pick(metadata) -> "np.ndarray":
        wanted = num_frames if num_frames is not None else min(limits.num_frames, metadata.total_num_frames)
        return sample_indices(metadata.total_num_frames, wanted)

    try:
        frames, metadata = decode_video(data, sample_indices_fn=pick)
    except (ValueError, ImportError) as err:
        raise APIError(400, f"video {_short(url)}: {err}", "messages") from None
    key = hashlib.sha256(data)
    key.update(repr(metadata.frames_indices).encode())
    return Video(frames, key.hexdigest())


def fetch(url: str, limits: MediaLimits, kind: str = "image") -> bytes:
    """The bytes a data:, http(s):// (public hosts only) or file:// (allow-listed) URL names."""
    if url.startswith("data:"):
        data = _data_url(url, limits)
    elif url.startswith(("http://", "https://")):
        data = _fetch(url, limits)
    elif url.startswith("file://"):
        data = _local_file(url, limits)
    else:
        raise APIError(400, f"{kind} URL {_short(url)} must be a data:, http(s):// or file:// URL", "messages")
    return data


def decode(data: bytes, source: str, limits: MediaLimits) -> Image:
    """Decode bytes into RGB, refusing more than max_image_pixels before the pixels are read."""
    try:
        pil = _open_image(data, _short(source), limits.max_image_pixels)
    except ValueError as err:
        status = 413 if "pixels" in str(err) or "too large" in str(err) else 400
        raise APIError(status, str(err), "messages") from None
    return Image(PIL.ImageOps.exif_transpose(pil).convert("RGB"), hashlib.sha256(data).hexdigest())


def _short(url: str) -> str:
    return url if len(url) <= 60 else url[:57] + "..."


def _too_big(limits: MediaLimits) -> APIError:
    return APIError(413, f"the file is larger than the {limits.max_image_bytes} bytes allowed", "messages")


def _data_url(url: str, limits: MediaLimits) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header or not payload:
        raise APIError(400, f"data URL {_short(url)} is not base64 data (expected data:image/...;base64,...)",
                       "messages")
    if len(payload) * 3 // 4 > limits.max_image_bytes + 3:
        raise _too_big(limits)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as err:
        raise APIError(400, f"data URL {_short(url)} has invalid base64: {err}", "messages") from None


def _local_file(url: str, limits: MediaLimits) -> bytes:
    if limits.allowed_local_path is None:
        raise APIError(400, "file:// media URLs are disabled; start the server with --allowed-local-media-path",
                       "messages")
    path = os.path.realpath(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    root = os.path.realpath(limits.allowed_local_path)
    if os.path.commonpath([path, root]) != root:
        raise APIError(400, f"file {_short(url)} is outside the allowed media path", "messages")
    if not os.path.isfile(path):
        raise APIError(400, f"file {_short(url)} does not exist", "messages")
    if os.path.getsize(path) > limits.max_image_bytes:
        raise _too_big(limits)
    with open(path, "rb") as f:
        return f.read()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address that was already checked, not to whatever the host resolves to next."""

    def __init__(self, host: str, address: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    def connect(self) -> None:
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)


def _checked_address(parts: urllib.parse.SplitResult) -> tuple[str, int]:
    if not parts.hostname:
        raise APIError(400, "media URL has no host", "messages")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve_host(parts.hostname, port)
    bad = [a for a in addresses if is_forbidden_address(a)]
    if not addresses or bad:
        raise APIError(400, f"media host {parts.hostname!r} resolves to a non-public address {bad}; only public "
                       "addresses may be fetched", "messages")
    return addresses[0], port


def _fetch(url: str, limits: MediaLimits) -> bytes:
    for _ in range(limits.max_redirects + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise APIError(400, f"media redirect to {_short(url)} is not http(s)", "messages")
        address, port = _checked_address(parts)
        cls = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        conn = cls(parts.hostname, address, port, limits.timeout)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": "llavakit", "Accept": "image/*"})
            response = conn.getresponse()
            if response.status in (301, 302, 303, 307, 308) and response.getheader("Location"):
                url = urllib.parse.urljoin(url, response.getheader("Location"))
                continue
            if response.status != 200:
                raise APIError(400, f"media URL {_short(url)} answered HTTP {response.status}", "messages")
            data = response.read(limits.max_image_bytes + 1)
        except (OSError, http.client.HTTPException) as err:
            raise APIError(400, f"cannot fetch {_short(url)}: {err}", "messages") from None
        finally:
            conn.close()
        if len(data) > limits.max_image_bytes:
            raise _too_big(limits)
        return data
    raise APIError(400, f"media URL made more than {limits.max_redirects} redirects", "messages")
