"""video_url content parts through the official openai client against a live server on tiny OneVision:
answers equal transformers' greedy answer on the same frames, the image fetch rules, bad videos as 400s."""

import base64
import shutil

import pytest

from llavakit.processing.video import load_video
from tests.cli.test_generate_video import transformers_answer
from tests.serving.conftest import start_server

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory, h264_clip):
    folder = tmp_path_factory.mktemp("video-media")
    shutil.copy(h264_clip, folder / "pan.mp4")
    return folder


@pytest.fixture(scope="module")
def video_server(onevision_checkpoint_dir, video_dir):
    from llavakit.serving.media import MediaLimits

    server = start_server(onevision_checkpoint_dir, limits=MediaLimits(allowed_local_path=str(video_dir),
                                                                       max_videos=1, max_video_bytes=1_000_000))
    yield server
    server.close()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def video_data_url(path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(server, video_url: dict, prompt: str = "What happens?", extra_parts: list | None = None):
    content = [{"type": "video_url", "video_url": video_url}, *(extra_parts or []), {"type": "text", "text": prompt}]
    return client(server).chat.completions.create(model="tiny-llava", max_tokens=6, temperature=0,
                                                  messages=[{"role": "user", "content": content}])


def test_data_url_video_matches_transformers(video_server, onevision_checkpoint_dir, h264_clip):
    reply = ask(video_server, {"url": video_data_url(h264_clip), "num_frames": 4})
    frames, _ = load_video(h264_clip, num_frames=4)
    expected = transformers_answer(onevision_checkpoint_dir, "What happens?", [frames])
    assert expected and reply.choices[0].message.content.strip() == expected


def test_file_url_under_the_allow_list_with_default_frames(video_server, onevision_checkpoint_dir, video_dir):
    reply = ask(video_server, {"url": f"file://{video_dir / 'pan.mp4'}"}, "Describe.")
    frames, _ = load_video(video_dir / "pan.mp4", num_frames=8)  # the server's default num_frames
    assert reply.choices[0].message.content.strip() == transformers_answer(onevision_checkpoint_dir, "Describe.",
                                                                           [frames])


def bad_request(server, video_url, **kwargs) -> str:
    with pytest.raises(openai.BadRequestError) as err:
        ask(server, video_url, **kwargs)
    assert err.value.status_code == 400
    return err.value.message


@pytest.mark.parametrize("name, message", [
    ("truncated.mp4", "cannot open .* as a video"),
    ("cut.mp4", "truncated or corrupt"),
    ("garbage.mp4", "cannot open .* as a video"),
    ("audio.m4a", "has no video stream"),
    ("no-frames.avi", "has a video stream with zero frames"),
])
def test_bad_videos_are_400(video_server, bad_videos, name, message):
    import re

    text = bad_request(video_server, {"url": video_data_url(bad_videos / name)})
    assert re.search(message, text), text


def test_fetch_rules_and_options_are_400(video_server, video_dir, tmp_path, h264_clip):
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(h264_clip.read_bytes())
    assert "outside the allowed media path" in bad_request(video_server, {"url": f"file://{outside}"})
    assert "non-public" in bad_request(video_server, {"url": "http://127.0.0.1:1/clip.mp4"})
    assert "must be a data:, http(s):// or file:// URL" in bad_request(video_server, {"url": "ftp://x/clip.mp4"})
    assert "num_frames' must be a positive integer" in bad_request(
        video_server, {"url": video_data_url(h264_clip), "num_frames": 0})
    assert "ask for fewer frames" in bad_request(video_server, {"url": video_data_url(h264_clip), "num_frames": 26})
    assert "more than the 1 allowed" in bad_request(
        video_server, {"url": video_data_url(h264_clip)},
        extra_parts=[{"type": "video_url", "video_url": {"url": video_data_url(h264_clip)}}])
    assert "2 <video> tokens and 1 videos" in bad_request(
        video_server, {"url": video_data_url(h264_clip), "num_frames": 2}, prompt="and this <video>?")
    # the server is unaffected: the next good request answers as before
    assert ask(video_server, {"url": video_data_url(h264_clip), "num_frames": 2}).choices[0].message.content


def test_video_for_an_image_only_model_is_400(live_server, h264_clip):
    text = bad_request(live_server, {"url": video_data_url(h264_clip)})
    assert "does not take videos" in text


def test_web_page_attaches_a_video(video_server, onevision_checkpoint_dir, h264_clip):
    """The chat page in headless Chromium: an attached .mp4 goes out as a video_url part; greedy answer as expected."""
    from tests.serving.test_web import ARGS, CHROMIUM

    if CHROMIUM is None:
        pytest.skip("no chromium installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    frames, _ = load_video(h264_clip, num_frames=8)  # the server's default num_frames
    expected = transformers_answer(onevision_checkpoint_dir, "What happens?", [frames])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(video_server.url + "/")
            page.fill("#max_tokens", "6")
            page.set_input_files("#image", str(h264_clip))
            page.wait_for_selector("#video_preview[src^='data:video']", state="attached", timeout=10_000)
            assert page.locator("#preview").get_attribute("src") is None
            page.fill("#prompt", "What happens?")
            page.click("#send")
            answer = page.wait_for_selector(".msg[data-done='true']", timeout=60_000)
            assert "error" not in (answer.get_attribute("class") or ""), answer.text_content()
            assert answer.text_content() == expected
            assert page.locator(".msg.user video").count() == 1
        finally:
            browser.close()


def test_image_and_video_in_one_request(video_server, onevision_checkpoint_dir, h264_clip, photos):
    import PIL.Image

    from tests.serving.conftest import data_url

    reply = ask(video_server, {"url": video_data_url(h264_clip), "num_frames": 3}, "Compare them.",
                extra_parts=[{"type": "image_url", "image_url": {"url": data_url(photos["chelsea"])}}])
    frames, _ = load_video(h264_clip, num_frames=3)
    image = PIL.Image.open(photos["chelsea"]).convert("RGB")
    expected = transformers_answer(onevision_checkpoint_dir, "Compare them.", [frames], [image])
    assert reply.choices[0].message.content.strip() == expected


def test_next_video_server_matches_transformers(next_video_checkpoint_dir, h264_clip):
    server = start_server(next_video_checkpoint_dir)
    try:
        reply = ask(server, {"url": video_data_url(h264_clip), "num_frames": 4})
    finally:
        server.close()
    frames, _ = load_video(h264_clip, num_frames=4)
    expected = transformers_answer(next_video_checkpoint_dir, "What happens?", [frames])
    assert expected and reply.choices[0].message.content.strip() == expected


def test_serve_cli_video_options(tiny_llava_dir, capsys, monkeypatch):
    """--num-frames / --max-videos reach the server's media limits; --num-frames 0 is a one-line error."""
    from llavakit.cli import main as cli
    from llavakit.cli.serve import build_app
    from llavakit.serving import app

    assert cli.main(["serve", str(tiny_llava_dir), "--num-frames", "0"]) == 2
    assert "--num-frames must be at least 1, got 0" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(app, "create_app", lambda engine, name, limits, **kw: seen.setdefault("limits", limits))
    build_app(cli.build_parser().parse_args(["serve", str(tiny_llava_dir), "--num-frames", "3", "--max-videos", "1"]))
    assert (seen["limits"].num_frames, seen["limits"].max_videos) == (3, 1)
