"""The chat page at /, end to end in headless Chromium (Debian's /usr/bin/chromium driven by playwright);
skipped only where no browser is installed."""

from __future__ import annotations

import os
import shutil

import httpx
import PIL.Image
import pytest

from tests.serving.conftest import greedy_reference

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "",
                             shutil.which("chromium-browser") or "") if p and os.path.exists(p)), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_page_is_served(live_server):
    response = httpx.get(live_server.url + "/", timeout=30)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert "/v1/chat/completions" in response.text and "getReader" in response.text


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_chat_in_the_browser_streams_the_greedy_answer(live_server, photos):
    sync_api = pytest.importorskip("playwright.sync_api")
    expected = greedy_reference(live_server, [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is in the image?"}]}],
        [PIL.Image.open(photos["chelsea"]).convert("RGB")], 10)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(live_server.url + "/")
            page.fill("#max_tokens", "10")
            page.fill("#temperature", "0")
            page.set_input_files("#image", str(photos["chelsea"]))
            page.wait_for_selector("#preview[src^='data:image']", state="attached", timeout=10_000)
            page.fill("#prompt", "What is in the image?")
            page.click("#send")
            answer = page.wait_for_selector(".msg[data-done='true']", timeout=60_000)
            assert "error" not in (answer.get_attribute("class") or "")
            assert answer.text_content() == expected
            assert page.locator(".msg.user img").count() == 1
        finally:
            browser.close()


@pytest.fixture(scope="module")
def demo_server():
    from llavakit import demo
    from tests.serving.conftest import start_server

    if not demo.has_trained_model():
        pytest.skip("the trained demo model is not shipped")
    server = start_server(demo.demo_checkpoint())  # a 256-token context: the page's defaults must fit it
    yield server
    server.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed")
def test_enter_sends_with_the_default_settings_and_the_model_name_is_shown(demo_server):
    from llavakit import demo

    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(demo_server.url + "/")
            page.wait_for_function("document.getElementById('model_name').textContent === 'tiny-llava'",
                                   timeout=10_000)
            page.set_input_files("#image", demo.EXAMPLE_IMAGE)
            page.wait_for_selector("#preview[src^='data:image']", state="attached", timeout=10_000)
            page.fill("#prompt", "What shape is inside the red box?")
            page.press("#prompt", "Enter")  # no click: Enter sends
            answer = page.wait_for_selector(".msg[data-done='true']", timeout=60_000)
            assert "error" not in (answer.get_attribute("class") or ""), answer.text_content()
            assert answer.text_content().strip() == "square"
            assert page.input_value("#prompt") == ""
            page.fill("#prompt", "line one")
            page.press("#prompt", "Shift+Enter")  # a new line, not a send
            assert page.input_value("#prompt") == "line one\n" and page.locator(".msg").count() == 2
        finally:
            browser.close()
