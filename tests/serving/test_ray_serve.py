"""`llavakit serve --ray`: two CPU replicas on a local Ray instance behind one OpenAI endpoint. Answers equal
model.generate, repeats of an image go to one replica (and hit its feature cache), text spreads over both."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import PIL.Image
import pytest

from llavakit.serving.ray_serve import REPLICA_HEADER, affinity_key, pick_replica
from tests.http import free_port
from tests.serving.conftest import data_url

openai = pytest.importorskip("openai")


def test_routing_rules():
    key = "data:image/png;base64,AAAA"
    body = b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, ' \
           b'{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}'
    assert affinity_key(body) == key and affinity_key(b'{"messages": [{"role": "user", "content": "hi"}]}') is None
    assert affinity_key(b"not json") is None
    assert pick_replica(None, [3, 1, 2]) == 1  # the least busy
    assert len({pick_replica(key, [0, 0, 0]), pick_replica(key, [9, 0, 0])}) == 1  # load does not move an image
    spread = {pick_replica(f"image-{i}", [0, 0]) for i in range(20)}
    assert spread == {0, 1}


@pytest.fixture(scope="module")
def ray_server(tiny_llava_dir):
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from llavakit.cli.main import build_parser
    from llavakit.serving.ray_serve import build_application

    args = build_parser().parse_args(["serve", str(tiny_llava_dir), "--served-model-name", "tiny-llava",
                                      "--max-batch-size", "8"])
    options = {k: v for k, v in vars(args).items() if k not in ("run", "ray")}
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(options, num_replicas=2, cpus_per_replica=1.0), name="llavakit",
                  route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while httpx.get(url + "/health", timeout=10).status_code != 200:
            assert time.time() < deadline, "the Ray Serve endpoint did not come up"
            time.sleep(1)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tiny_llava_dir):
    from llavakit import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_dir).eval()

    def greedy(text: str, image_path=None, max_new_tokens: int = 8) -> str:
        content = ([{"type": "image"}] if image_path else []) + [{"type": "text", "text": text}]
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        images = [PIL.Image.open(image_path).convert("RGB")] if image_path else None
        inputs = processor(images=images, text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return greedy


def _image_message(path, text="What is in the image?"):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(path)}},
                                         {"type": "text", "text": text}]}]


@pytest.mark.slow  # starts a local Ray with two model replicas: about a minute on 2 cores
def test_answers_equal_generate_and_images_stick_to_a_replica(ray_server, reference, photos):
    client = openai.OpenAI(base_url=ray_server + "/v1", api_key="x", max_retries=0, timeout=120)
    home = {name: str(pick_replica(data_url(path), [0, 0])) for name, path in photos.items()}
    names = [min(n for n in home if home[n] == "0"), min(n for n in home if home[n] == "1")]  # one per replica
    for name in names + [names[0], names[0]]:
        raw = client.chat.completions.with_raw_response.create(model="tiny-llava", messages=_image_message(
            photos[name]), max_tokens=8, temperature=0)
        assert raw.headers[REPLICA_HEADER] == home[name]  # the image's replica, whatever the load
        assert raw.parse().choices[0].message.content == reference("What is in the image?", photos[name])
    metrics = httpx.get(ray_server + "/metrics", headers={REPLICA_HEADER: home[names[0]]}, timeout=30).text
    hits = [line for line in metrics.splitlines() if line.startswith("llavakit_image_cache_hits_total")]
    assert hits and float(hits[0].split()[-1]) >= 2  # the repeats reused that replica's cached features


@pytest.mark.slow
def test_streaming_errors_and_load_spreading_through_the_router(ray_server, reference):
    client = openai.OpenAI(base_url=ray_server + "/v1", api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Tell me a story"}]
    chunks = client.chat.completions.create(model="tiny-llava", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        reference("Tell me a story", max_new_tokens=10)
    assert chunks[-1].usage.completion_tokens == 10
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="tiny-llava", messages=messages, temperature=7)

    def ask(i: int) -> str:
        raw = client.chat.completions.with_raw_response.create(model="tiny-llava", messages=[
            {"role": "user", "content": f"Count to {i}"}], max_tokens=40, temperature=0)
        return raw.headers[REPLICA_HEADER]

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replicas = set(pool.map(ask, range(6), timeout=300))
    assert replicas == {"0", "1"}
