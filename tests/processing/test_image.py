"""CLIPImageProcessor against transformers' (PIL backend) on real photos and odd inputs, plus load_image."""

import base64
import http.server
import io
import json
import struct
import threading
import zlib

import numpy as np
import PIL.Image
import pytest
import torch
import transformers

from llavakit import AutoImageProcessor, CLIPImageProcessor
from llavakit.processing.image import load_image
from tests.reference import hf_image_processor


@pytest.fixture(scope="module")
def processors(tiny_llava_dir):
    """(llavakit, transformers) image processors of the tiny checkpoint (28 px, CLIP mean/std)."""
    transformers.logging.set_verbosity_error()
    return (AutoImageProcessor.from_pretrained(tiny_llava_dir),
            hf_image_processor(tiny_llava_dir))


@pytest.fixture(scope="module")
def images(photos):
    return {name: PIL.Image.open(path) for name, path in photos.items()}


def _cases(images):
    astro, horse, camera = images["astronaut"], images["horse"], images["camera"]
    array = np.array(astro)
    return {
        **{name: (image, {}) for name, image in images.items()},  # RGB, greyscale L, RGBA, JPEG
        "palette": (astro.convert("P"), {}),
        "palette_transparency": (horse.convert("P"), {}),
        "grey_alpha": (camera.convert("LA"), {}),
        "1x1": (PIL.Image.new("RGB", (1, 1), (10, 20, 30)), {}),
        "7x300": (astro.resize((7, 300)), {}),
        "300x7": (astro.resize((300, 7)), {}),
        "numpy_hwc": (array, {}),
        "numpy_chw": (array.transpose(2, 0, 1), {}),
        "numpy_float01": (array.astype(np.float32) / 255, {}),
        "numpy_float255": (array.astype(np.float32), {}),
        "numpy_float64": (array.astype(np.float64) / 255, {}),
        "numpy_rgba": (np.array(horse), {}),
        "numpy_rgba_float": (np.array(horse).astype(np.float32) / 255, {}),
        "torch_chw": (torch.from_numpy(array.transpose(2, 0, 1).copy()), {}),
        "torch_hwc": (torch.from_numpy(array.copy()), {}),
        "nested_lists": ([[astro], [camera, images["coffee"]]], {}),
        "batch_4d": (np.stack([array, array[::-1]]), {}),
        "fixed_size": (astro, {"size": {"height": 20, "width": 30}, "do_center_crop": False}),
        "int_size": (astro, {"size": 20}),
        "int_crop": (astro, {"crop_size": 20}),
        "bigger_crop_pads": (astro, {"crop_size": {"height": 40, "width": 33}}),
        "shortest_and_longest": (astro.resize((100, 300)),
                                 {"size": {"shortest_edge": 40, "longest_edge": 60}, "do_center_crop": False}),
        "bilinear": (astro, {"resample": 2}),
        "nearest": (astro, {"resample": 0}),
        "no_resize": (astro, {"do_resize": False}),
        "no_rescale": (astro, {"do_rescale": False}),
        "no_normalize": (astro, {"do_normalize": False}),
        "nothing": (astro, {"do_resize": False, "do_center_crop": False, "do_rescale": False, "do_normalize": False}),
        "scalar_mean_std": (astro, {"image_mean": 0.5, "image_std": 0.5}),
        "grey_without_rgb": (camera, {"do_convert_rgb": False, "image_mean": [0.5], "image_std": [0.5]}),
        "input_data_format": (array, {"input_data_format": "channels_last"}),
        "rescale_factor": (astro, {"rescale_factor": 1 / 127.5}),
    }


def test_config_matches_transformers(processors):
    ours, ref = processors
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in ref.to_dict().items()}
    assert ours.to_dict() == expected
    assert ours.size == {"shortest_edge": 28} and ours.crop_size == {"height": 28, "width": 28}


def test_defaults_match_transformers():
    ref = transformers.CLIPImageProcessor()
    expected = {k: list(v) if isinstance(v, tuple) else v for k, v in ref.to_dict().items()}
    assert CLIPImageProcessor().to_dict() == expected


def test_every_case_is_bit_identical(processors, images):
    ours, ref = processors
    for name, (image, kwargs) in _cases(images).items():
        expected = ref(image, return_tensors="np", **kwargs)["pixel_values"]
        got = ours(image, return_tensors="np", **kwargs)["pixel_values"]
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        assert np.array_equal(got, expected), name


def test_hub_layout_reads_preprocessor_config(processors, tiny_llava_hub_dir, images):
    ours = AutoImageProcessor.from_pretrained(tiny_llava_hub_dir)
    assert ours.to_dict() == processors[0].to_dict()
    out = ours(images["chelsea"], return_tensors="pt")["pixel_values"]
    assert torch.equal(out, processors[0](images["chelsea"], return_tensors="pt")["pixel_values"])


def test_return_types(processors, images):
    ours, ref = processors
    as_list = ours(images["astronaut"])["pixel_values"]
    ref_list = ref(images["astronaut"])["pixel_values"]
    assert isinstance(as_list, list) and len(as_list) == 1 and np.array_equal(as_list[0], ref_list[0])
    pt = ours([images["astronaut"], images["rocket"]], return_tensors="pt")["pixel_values"]
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 3, 28, 28) and pt.dtype == torch.float32


def test_channels_last_is_the_transpose(processors, images):
    ours, _ = processors
    first = ours(images["coffee"], return_tensors="np")["pixel_values"]
    last = ours(images["coffee"], return_tensors="np", data_format="channels_last")["pixel_values"]
    assert last.shape == (1, 28, 28, 3) and np.array_equal(last, first.transpose(0, 2, 3, 1))


def test_paths_are_loaded(processors, photos):
    ours, ref = processors
    got = ours([str(photos["rocket"]), photos["chelsea"]], return_tensors="np")["pixel_values"]
    expected = ref([str(photos["rocket"]), str(photos["chelsea"])], return_tensors="np")["pixel_values"]
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((20, 20), np.uint8), ValueError, r"3-D .* got shape \(20, 20\).*greyscale"),
    ([[1, 2], [3, 4]], TypeError, "list of int"),
    (np.zeros((4, 8, 4), np.uint8), ValueError, r"channel axis.*\(4, 8, 4\).*input_data_format"),
    (np.zeros((10, 10, 5), np.uint8), ValueError, r"no channel axis of size 1, 3 or 4"),
    ([], ValueError, "no images"),
    (np.zeros((2, 2, 2, 3, 3), np.uint8), ValueError, "got shape"),
    ({"image": 1}, TypeError, "got dict"),
    (np.zeros((8, 8, 3), bool), ValueError, "dtype bool"),
])
def test_bad_images_give_clear_errors(processors, bad, error, match):
    with pytest.raises(error, match=match):
        processors[0](bad, return_tensors="np")


def test_bad_arguments_give_clear_errors(processors, images):
    ours, _ = processors
    with pytest.raises(ValueError, match="1 channel.*image_mean has 3"):
        ours(images["camera"], do_convert_rgb=False)
    with pytest.raises(ValueError, match="data_format"):
        ours(images["camera"], data_format="chw")
    with pytest.raises(ValueError, match="size must have"):
        ours(images["camera"], size={"width": 3})
    with pytest.raises(ValueError, match="different processed shapes"):
        ours([images["camera"], images["coffee"]], do_center_crop=False, return_tensors="pt")
    with pytest.raises(TypeError):
        ours(images["camera"], do_resise=True)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        ours(np.full((8, 8, 3), 1.5, np.float32))


def test_save_and_reload_round_trip(processors, images, tmp_path):
    ours, _ = processors
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "CLIPImageProcessor"
    again = CLIPImageProcessor.from_pretrained(tmp_path)
    ref = hf_image_processor(tmp_path)
    expected = ref(images["horse"], return_tensors="np")["pixel_values"]
    assert np.array_equal(again(images["horse"], return_tensors="np")["pixel_values"], expected)


def test_old_config_forms_and_extra_keys_survive(tmp_path, images):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "size": 28, "crop_size": 28, "do_center_crop": True, "feature_extractor_type": "CLIPFeatureExtractor",
        "crop_pct": 0.9}))
    ours = AutoImageProcessor.from_pretrained(tmp_path)
    ref = transformers.CLIPImageProcessorPil.from_pretrained(tmp_path)
    assert ours.size == {"shortest_edge": 28} and ours.to_dict()["crop_pct"] == 0.9
    assert np.array_equal(ours(images["rocket"], return_tensors="np")["pixel_values"],
                          ref(images["rocket"], return_tensors="np")["pixel_values"])


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        CLIPImageProcessor.from_pretrained(tmp_path)


# ---- load_image ----------------------------------------------------------------------------------
def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_claiming(width, height):
    """A PNG whose header claims a huge size (a decompression bomb) with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_load_image_sources(images, photos):
    astro = images["astronaut"]
    assert load_image(astro) is astro
    from_path = load_image(photos["horse"])
    assert from_path.mode == "RGB" and from_path.size == images["horse"].size
    ref = transformers.image_utils.load_image(str(photos["horse"]))
    assert np.array_equal(np.array(from_path), np.array(ref))
    data_url = "data:image/png;base64," + base64.b64encode(_png_bytes(images["camera"])).decode()
    assert np.array_equal(np.array(load_image(data_url)), np.array(images["camera"].convert("RGB")))


def test_load_image_errors(tmp_path):
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot decode an image from .*junk.png"):
        load_image(junk)
    with pytest.raises(ValueError, match="not an existing file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="not base64"):
        load_image("data:text/plain,hello")
    with pytest.raises(TypeError, match="got int"):
        load_image(3)
    bomb = "data:image/png;base64," + base64.b64encode(_png_header_claiming(40000, 40000)).decode()
    with pytest.raises(ValueError, match="decompression bomb|too large"):
        load_image(bomb)
    with pytest.raises(ValueError, match="more than the 100 allowed"):
        load_image("data:image/png;base64," + base64.b64encode(_png_bytes(PIL.Image.new("RGB", (20, 20)))).decode(),
                   max_pixels=100)


@pytest.fixture(scope="module")
def http_root(tmp_path_factory, photos):
    """A local HTTP server serving a real photo and a junk file."""
    root = tmp_path_factory.mktemp("http")
    (root / "rocket.jpg").write_bytes(photos["rocket"].read_bytes())
    (root / "junk.bin").write_bytes(b"\x00" * 1000)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_load_image_from_url(http_root, photos):
    image = load_image(f"{http_root}/rocket.jpg")
    assert np.array_equal(np.array(image), np.array(load_image(photos["rocket"])))
    with pytest.raises(ValueError, match="larger than 100 bytes"):
        load_image(f"{http_root}/rocket.jpg", max_bytes=100)
    with pytest.raises(ValueError, match="cannot decode an image from http"):
        load_image(f"{http_root}/junk.bin")
    with pytest.raises(ValueError, match="cannot download"):
        load_image(f"{http_root}/missing.png")
