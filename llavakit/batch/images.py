"""Load one row's image: URLs go through the server's media rules (SSRF guard, size and pixel caps),
local files are read under the same size and pixel caps."""

from __future__ import annotations

import os

import PIL.Image

from llavakit.serving import media
from llavakit.serving.schemas import APIError


def load_image(source: str, limits: media.MediaLimits | None = None) -> PIL.Image.Image:
    """An RGB image from an http(s)/data: URL or an absolute local path; ValueError names what went wrong."""
    limits = limits or media.MediaLimits()
    try:
        if source.startswith(("http://", "https://", "data:")):
            return media.load(source, limits).pil
        if not os.path.isfile(source):
            raise ValueError(f"image file {source} does not exist")
        if os.path.getsize(source) > limits.max_image_bytes:
            raise ValueError(f"image file {source} is larger than the {limits.max_image_bytes} bytes allowed")
        with open(source, "rb") as f:
            return media.decode(f.read(), source, limits).pil
    except APIError as err:
        raise ValueError(err.message) from None
