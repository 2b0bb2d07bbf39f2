"""Loading a row's image: local files under size/pixel caps, URLs through the server's SSRF guard."""

from __future__ import annotations

import base64

import pytest

from llavakit.batch.images import load_image
from llavakit.serving.media import MediaLimits


def test_local_file_and_data_url_decode_to_rgb(photos):
    image = load_image(str(photos["horse"]))  # RGBA on disk
    assert image.mode == "RGB" and image.size == (400, 328)
    data = base64.b64encode(photos["chelsea"].read_bytes()).decode()
    assert load_image(f"data:image/png;base64,{data}").size == (451, 300)


def test_missing_corrupt_and_oversized_files_are_value_errors(tmp_path, photos):
    with pytest.raises(ValueError, match="does not exist"):
        load_image(str(tmp_path / "nope.png"))
    (tmp_path / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(str(tmp_path / "bad.png"))
    with pytest.raises(ValueError, match="larger than the 100 bytes"):
        load_image(str(photos["chelsea"]), MediaLimits(max_image_bytes=100))


def test_private_address_urls_are_refused():
    with pytest.raises(ValueError, match="non-public address"):
        load_image("http://127.0.0.1:9/cat.png")
