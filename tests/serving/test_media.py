"""Image fetching rules: size and pixel caps, file:// confinement, and the SSRF guard (no traffic leaves 127.0.0.1)."""

from __future__ import annotations

import base64
import http.server
import io
import socket
import threading

import PIL.Image
import pytest

from llavakit.serving import media
from llavakit.serving.schemas import APIError


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture
def no_connections(monkeypatch):
    """Fail the test if anything tries to open a socket connection."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise AssertionError(f"a connection to {address} was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_data_url_decodes_and_hashes_bytes():
    data = _png(8, 6)
    image = media.load(_data_url(data), media.MediaLimits())
    assert image.pil.size == (8, 6) and image.pil.mode == "RGB"
    assert image.digest == media.load(_data_url(data), media.MediaLimits()).digest


def test_too_many_bytes_is_413():
    with pytest.raises(APIError) as err:
        media.load(_data_url(_png(64, 64)), media.MediaLimits(max_image_bytes=50))
    assert err.value.status == 413


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _png(5000, 5000)  # small file, 25M pixels
    with pytest.raises(APIError) as err:
        media.load(_data_url(bomb), media.MediaLimits(max_image_pixels=1_000_000))
    assert err.value.status == 413 and "25000000 pixels" in err.value.message


@pytest.mark.parametrize("url", ["data:image/png;base64,@@@", "data:text/plain,hello", "ftp://x/y.png",
                                 "/etc/passwd", "data:image/png;base64," + base64.b64encode(b"not an image").decode()])
def test_bad_urls_are_400(url):
    with pytest.raises(APIError) as err:
        media.load(url, media.MediaLimits())
    assert err.value.status == 400


def test_file_urls_only_under_the_allowed_folder(tmp_path):
    inside = tmp_path / "ok"
    inside.mkdir()
    (inside / "a.png").write_bytes(_png(4, 4))
    (tmp_path / "secret.png").write_bytes(_png(4, 4))
    limits = media.MediaLimits(allowed_local_path=str(inside))
    assert media.load((inside / "a.png").as_uri(), limits).pil.size == (4, 4)
    for url in [(tmp_path / "secret.png").as_uri(), "file://" + str(inside) + "/../secret.png"]:
        with pytest.raises(APIError, match="outside the allowed"):
            media.load(url, limits)
    with pytest.raises(APIError, match="disabled"):
        media.load((inside / "a.png").as_uri(), media.MediaLimits())


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254",
                                     "::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1", "100.64.0.1", "224.0.0.1"])
def test_non_public_addresses_are_forbidden(address):
    assert media.is_forbidden_address(address)


def test_public_addresses_are_allowed():
    assert not media.is_forbidden_address("8.8.8.8")
    assert not media.is_forbidden_address("2606:4700:4700::1111")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/a.png", "http://10.0.0.1/a.png", "http://[::1]/a.png",
                                 "https://169.254.169.254/latest/meta-data", "http://localhost/a.png"])
def test_private_urls_refused_before_any_connection(url, no_connections):
    with pytest.raises(APIError, match="non-public address") as err:
        media.load(url, media.MediaLimits())
    assert err.value.status == 400 and no_connections == []


def test_host_with_any_private_address_is_refused(monkeypatch, no_connections):
    monkeypatch.setattr(media, "resolve_host", lambda host, port: ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(APIError, match="non-public"):
        media.load("http://mixed.example/a.png", media.MediaLimits())
    assert no_connections == []


class _Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.hits.append(self.path)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
            return
        body = _png(5, 5) if self.path == "/img.png" else b"x" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_site(monkeypatch):
    """A local HTTP server reached as 'public.test'; the guard is relaxed for 127.0.0.1 only."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Handler.hits = []
    real_resolve, real_check = media.resolve_host, media.is_forbidden_address
    monkeypatch.setattr(media, "resolve_host",
                        lambda host, port: ["127.0.0.1"] if host == "public.test" else real_resolve(host, port))
    monkeypatch.setattr(media, "is_forbidden_address", lambda a: a != "127.0.0.1" and real_check(a))
    yield f"http://public.test:{server.server_address[1]}"
    server.shutdown()


def test_remote_fetch_and_size_cap(local_site):
    assert media.load(local_site + "/img.png", media.MediaLimits()).pil.size == (5, 5)
    with pytest.raises(APIError) as err:
        media.load(local_site + "/big", media.MediaLimits(max_image_bytes=1000))
    assert err.value.status == 413


def test_redirect_to_private_address_is_refused(local_site):
    with pytest.raises(APIError, match="non-public"):
        media.load(local_site + "/redirect?to=http://10.9.8.7/img.png", media.MediaLimits())
    assert _Handler.hits == ["/redirect?to=http://10.9.8.7/img.png"]


def test_redirect_is_followed_when_allowed(local_site):
    target = local_site + "/img.png"
    assert media.load(local_site + "/redirect?to=" + target, media.MediaLimits()).pil.size == (5, 5)
    assert _Handler.hits == ["/redirect?to=" + target, "/img.png"]


def test_data_url_that_is_not_an_image_says_so_without_a_python_repr():
    with pytest.raises(APIError) as err:
        media.load(_data_url(b"hello, not a picture"), media.MediaLimits())
    assert err.value.status == 400
    assert "not an image format" in err.value.message and "object at 0x" not in err.value.message
