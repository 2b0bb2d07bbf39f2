"""LlavaNextProcessor against transformers': per-image token counts (anyres unpadding), calls, errors, save/load."""

import json

import PIL.Image
import pytest
import transformers
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from llavakit import AutoProcessor, AutoTokenizer, CLIPImageProcessor, LlavaNextImageProcessor, LlavaNextProcessor
from tests.assets import LLAVA_15_TEMPLATE
from tests.processing.test_llava import assert_same
from tests.reference import hf_processor

SMALL = dict(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
             image_grid_pinpoints=[[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]])
REAL = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
SETTINGS = dict(vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.fixture(scope="module")
def pair(tokenizer_dir, tmp_path_factory):
    """(llavakit, transformers): transformers' processor (28-px crops, patch 7) saved, then loaded by llavakit."""
    transformers.logging.set_verbosity_error()
    ref = transformers.LlavaNextProcessor(LlavaNextImageProcessorPil(**SMALL),
                                          transformers.AutoTokenizer.from_pretrained(tokenizer_dir), patch_size=7,
                                          chat_template=LLAVA_15_TEMPLATE, **SETTINGS)
    folder = tmp_path_factory.mktemp("llava-next-processor")
    ref.save_pretrained(folder)
    return LlavaNextProcessor.from_pretrained(folder), ref


@pytest.fixture(scope="module")
def real(tokenizer_dir):
    """(llavakit, transformers) at the llava-v1.6 size: 336-px crops, patch 14, default pinpoints."""
    ours = LlavaNextProcessor(LlavaNextImageProcessor(**REAL), AutoTokenizer.from_pretrained(tokenizer_dir),
                              patch_size=14, **SETTINGS)
    ref = transformers.LlavaNextProcessor(LlavaNextImageProcessorPil(**REAL),
                                          transformers.AutoTokenizer.from_pretrained(tokenizer_dir), patch_size=14,
                                          **SETTINGS)
    return ours, ref


@pytest.fixture(scope="module")
def images(photos):
    opened = {name: PIL.Image.open(path) for name, path in photos.items()}
    astro = opened["astronaut"]
    return {**opened, "rotated": opened["coffee"].rotate(37, expand=True), "wide_strip": astro.crop((0, 0, 512, 30)),
            "1x1": PIL.Image.new("RGB", (1, 1), (10, 20, 30)), "7x300": astro.resize((7, 300)),
            "300x7": astro.resize((300, 7)), "20x20": astro.resize((20, 20))}


# ---- the token count ----------------------------------------------------------------------------
WORKED = {(480, 640): 2340, (899, 1024): 2634, (808, 1100): 2340, (503, 316): 1526, (336, 336): 1176,
          (100, 2000): 868, (2000, 100): 936, (337, 1000): 2328, (720, 1280): 1948, (1080, 1920): 1948,
          (950, 1256): 2340, (224, 224): 1176, (300, 500): 1560}
SIDES = [1, 2, 7, 20, 99, 224, 300, 336, 337, 480, 503, 640, 672, 673, 899, 1008, 1080, 1256, 2000, 4001]


def test_worked_token_counts(real):
    ours, _ = real
    assert {size: ours.num_image_tokens(*size) for size in WORKED} == WORKED
    # (480, 640): 2x2 grid, unpadded map 36x48 + 36 newlines + 576 base
    assert ours.num_image_tokens(480, 640) == 36 * 48 + 36 + 576


def test_token_counts_match_transformers_over_many_sizes(real, pair):
    for (ours, ref), crop in ((real, 336), (pair, 28)):
        for height in SIDES:
            for width in SIDES[::2] if crop == 28 else SIDES:
                expected = ref._get_number_of_features(height, width, crop, crop) - 1  # "default" drops CLS
                assert ours.num_image_tokens(height, width) == expected, (height, width, crop)


def test_hf_test_vector(real):
    ours, _ = real
    image_processor = LlavaNextImageProcessor(**REAL, image_grid_pinpoints=[[672, 336]])
    single = LlavaNextProcessor(image_processor, ours.tokenizer, patch_size=14,
                                vision_feature_select_strategy="default", num_additional_image_tokens=0)
    assert single.num_image_tokens(503, 316) == 1525
    assert single.num_image_tokens(503, 316, 336, 336) == 1525


# ---- calls --------------------------------------------------------------------------------------
def test_single_prompt_matches(pair, images):
    ours, ref = pair
    prompt = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    for return_tensors in (None, "pt", "np"):
        got = ours(images=images["chelsea"], text=prompt, return_tensors=return_tensors)
        assert_same(got, ref(images=images["chelsea"], text=prompt, return_tensors=return_tensors))
    got = ours(images=images["chelsea"], text=prompt, return_tensors="pt")
    assert list(got) == ["input_ids", "attention_mask", "pixel_values", "image_sizes"]
    assert got["image_sizes"].tolist() == [[300, 451]]
    assert got["pixel_values"].shape == (1, 5, 3, 28, 28)  # 2x2 grid + base
    assert (got["input_ids"] == 32000).sum() == ours.num_image_tokens(300, 451)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_multi_image_batch_of_different_sizes_matches(pair, images, padding_side):
    ours, ref = pair
    kwargs = dict(
        images=[[images["astronaut"], images["wide_strip"]], [images["1x1"]], [images["300x7"], images["rotated"]],
                [images["horse"]]],
        text=["USER: <image>\n<image>\nCompare them. ASSISTANT:", "<image> Describe.", "<image> then <image>?",
              "A longer prompt: <image>?"],
        padding=True, return_tensors="pt", padding_side=padding_side,
    )
    got = ours(**kwargs)
    assert_same(got, ref(**kwargs))
    sizes = got["image_sizes"].tolist()
    assert sizes == [[512, 512], [30, 512], [1, 1], [7, 300], list(images["rotated"].size[::-1]), [328, 400]]
    assert got["pixel_values"].shape == (6, 5, 3, 28, 28)
    counts = [ours.num_image_tokens(*size) for size in sizes]
    assert (got["input_ids"] == 32000).sum(1).tolist() == [counts[0] + counts[1], counts[2], counts[3] + counts[4],
                                                            counts[5]]
    assert len(set(counts)) > 2  # the sizes really give different counts


def test_image_kwargs_and_images_only(pair, images):
    ours, ref = pair
    kwargs = dict(images=[images["coffee"], images["20x20"]], text=["<image> a", "b <image>"], padding=True,
                  image_grid_pinpoints=[[28, 28], [56, 84]], return_tensors="pt")
    got = ours(**kwargs)
    assert_same(got, ref(**kwargs))
    assert got["pixel_values"].shape == (2, 7, 3, 28, 28)
    assert_same(ours(images=images["rocket"], return_tensors="pt"), ref(images=images["rocket"], return_tensors="pt"))
    assert_same(ours(text="hello", return_tensors="pt"), ref(text="hello", return_tensors="pt"))


def test_chat_template_matches(pair, photos):
    ours, ref = pair
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(photos["chelsea"])},
                                                 {"type": "text", "text": "What is this?"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
                    {"role": "user", "content": [{"type": "image", "path": str(photos["rocket"])},
                                                 {"type": "text", "text": "And this?"}]}]
    kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    got = ours.apply_chat_template(conversation, **kwargs)
    assert_same(got, ref.apply_chat_template(conversation, **kwargs))
    assert got["pixel_values"].shape[:2] == (2, 5)  # both photos are far larger than the grid: 2x2 + base


# ---- errors -------------------------------------------------------------------------------------
def test_errors(pair, images):
    ours, ref = pair
    with pytest.raises(ValueError, match="Found total 2 <image> tokens and 1 images"):
        ours(images=images["camera"], text="<image><image>")
    with pytest.raises(ValueError, match=r"max_length=20 is too small"):
        ours(images=images["camera"], text="USER: <image> x", truncation=True, max_length=20)
    with pytest.raises(ValueError, match="Mismatch in `image` token count"):
        ref(images=images["camera"], text="USER: <image> x", truncation=True, max_length=20)
    with pytest.raises(TypeError, match="unexpected LlavaNextProcessor arguments \\['paddding'\\]"):
        ours(text="x", paddding=True)
    with pytest.raises(ValueError, match="patch_size is not set on this LlavaNextProcessor"):
        LlavaNextProcessor(ours.image_processor, ours.tokenizer).num_image_tokens(28, 28)
    with pytest.raises(TypeError, match="needs a LlavaNextImageProcessor.*got CLIPImageProcessor"):
        LlavaNextProcessor(CLIPImageProcessor(), ours.tokenizer, patch_size=14)


# ---- loading and saving -------------------------------------------------------------------------
def test_loaded_settings_match(pair):
    ours, ref = pair
    assert (ours.patch_size, ours.vision_feature_select_strategy, ours.num_additional_image_tokens) == (7, "default", 1)
    assert ours.image_processor.to_dict() == {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in ref.image_processor.to_dict().items()}
    assert ours.chat_template == ref.chat_template == LLAVA_15_TEMPLATE
    assert ours.model_input_names == ref.model_input_names


def test_save_and_reload(pair, images, tmp_path):
    ours, _ = pair
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["processor_class"] == "LlavaNextProcessor"
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["image_processor_type"] == \
        "LlavaNextImageProcessor"
    theirs = hf_processor(tmp_path)
    again = AutoProcessor.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "LlavaNextProcessor" and isinstance(again, LlavaNextProcessor)
    kwargs = dict(images=[images["rocket"], images["7x300"]], text=["<image> one", "two <image>"], padding=True,
                  return_tensors="pt")
    assert_same(again(**kwargs), theirs(**kwargs))
    assert_same(again(**kwargs), ours(**kwargs))


def test_auto_processor_by_model_type(pair, tmp_path):
    ours, _ = pair
    ours.tokenizer.save_pretrained(tmp_path)
    ours.image_processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("processor_class", None)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next"}))
    loaded = AutoProcessor.from_pretrained(tmp_path, patch_size=14, vision_feature_select_strategy="default")
    assert isinstance(loaded, LlavaNextProcessor) and isinstance(loaded.image_processor, LlavaNextImageProcessor)
    # patch 14 on 28-px crops: 2x2 features per view; (56, 28) fills a 2x1 grid: 4x2 map + 4 newlines + 4 base - 1
    assert loaded.num_image_tokens(56, 28) == 4 * 2 + 4 + 2 * 2 - 1
