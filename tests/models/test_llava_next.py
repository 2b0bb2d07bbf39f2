"""LLaVA-NeXT against transformers' LlavaNextForConditionalGeneration on a tiny random anyres checkpoint.

Inputs come from transformers' own LlavaNextProcessor, so these tests do not depend on llavakit's processor.
The tiny tower sees 28 px crops (patch 7: a 4x4 grid, 16 tokens per crop) and the pinpoints are llava-v1.6's
scaled from 336 to 28 px: 1x2, 2x1, 2x2, 3x1 and 1x3 grids.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers
from PIL import Image
from transformers.models.llava_next import modeling_llava_next as hf_next

from llavakit import AutoConfig, AutoModel, AutoModelForImageTextToText
from llavakit import anyres
from llavakit.config import LlavaNextConfig
from llavakit.models.llava_next import LlavaNextForConditionalGeneration, LlavaNextModel, unpad_image
from llavakit.models.outputs import LlavaCausalLMOutputWithPast
from tests import assets
from tests.parity import assert_close, run_both
from tests.reference import image_features, newest_keys

IMAGE, PAD = 32000, 32001
CROP = assets.NEXT_CROP
PINPOINTS = assets.NEXT_PINPOINTS
ATOL = 1e-5
PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"


@pytest.fixture(scope="module")
def next_dir(tiny_llava_next_dir):
    return tiny_llava_next_dir


@pytest.fixture(scope="module")
def pair(next_dir):
    hf = transformers.LlavaNextForConditionalGeneration.from_pretrained(next_dir).eval()
    return hf, LlavaNextForConditionalGeneration.from_pretrained(next_dir)


@pytest.fixture(scope="module")
def processor(next_dir):
    image_processor = transformers.LlavaNextImageProcessorPil.from_pretrained(next_dir)
    processor = transformers.LlavaNextProcessor.from_pretrained(next_dir, image_processor=image_processor)
    processor.tokenizer.padding_side = "left"
    return processor


@pytest.fixture(scope="module")
def images(photos):
    """Real photos plus two strips cut from them, so the grids cover every pinpoint (all aspect ratios)."""
    loaded = {name: Image.open(path) for name, path in photos.items()}
    loaded["wide"] = loaded["coffee"].crop((0, 100, 600, 250))  # 150 x 600: 1x3 grid
    loaded["tall"] = loaded["rocket"].crop((200, 0, 330, 427))  # 427 x 130: 3x1 grid
    loaded["small"] = loaded["astronaut"].resize((40, 20))  # 20 x 40: too small to gain from 2x2, so 1x2
    return loaded






def with_positions(inputs) -> dict:
    """The processor's batch plus mask-derived position_ids (what generate uses), for a padded plain forward."""
    mask = inputs["attention_mask"]
    return dict(inputs, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))


def grids(inputs) -> list[tuple[int, int]]:
    return [anyres.get_anyres_image_grid_shape(s, PINPOINTS, CROP) for s in inputs["image_sizes"]]


# ---- geometry ----------------------------------------------------------------------------------------

def random_sizes(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    sizes = [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(n)]
    sizes += [(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(n)]
    # the worked sizes of the reference notes, squares, and extreme strips
    return sizes + [(480, 640), (899, 1024), (808, 1100), (503, 316), (336, 336), (100, 2000), (2000, 100),
                    (337, 1000), (720, 1280), (1080, 1920), (950, 1256), (224, 224), (300, 500), (1, 1), (1, 5000)]


@pytest.mark.parametrize("pinpoints, crop, side", [
    ([[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], 336, 24),  # llava-v1.6
    (PINPOINTS, CROP, 4),
    ([[384, 768], [768, 384], [1152, 384], [384, 1152], [1152, 1152]], 384, 27),  # SigLIP-sized crops
])
def test_geometry_matches_transformers_over_many_sizes(pinpoints, crop, side):
    from transformers.image_processing_utils import select_best_resolution

    for size in random_sizes(300):
        assert anyres.select_best_resolution(size, pinpoints) == tuple(select_best_resolution(size, pinpoints))
        grid = anyres.get_anyres_image_grid_shape(size, pinpoints, crop)
        assert grid == tuple(hf_next.get_anyres_image_grid_shape(list(size), pinpoints, crop)), size
        assert anyres.image_size_to_num_patches(size, pinpoints, crop) == \
            hf_next.image_size_to_num_patches(list(size), pinpoints, crop)
        feature_map = torch.empty(1, grid[0] * side, grid[1] * side)
        expected = hf_next.unpad_image(feature_map, torch.tensor(size))
        assert anyres.unpadded_size(size, feature_map.shape[1:]) == tuple(expected.shape[1:]), size
        assert unpad_image(feature_map, torch.tensor(size)).shape == expected.shape


def test_unpad_image_keeps_the_same_centre_region_as_transformers():
    feature_map = torch.randn(3, 48, 48)
    for size in [(480, 640), (640, 480), (100, 2000), (2000, 100), (899, 1024), (503, 316), (5, 7)]:
        ours, theirs = unpad_image(feature_map, size), hf_next.unpad_image(feature_map, size)
        assert torch.equal(ours, theirs), size
    assert unpad_image(feature_map, (480, 640)).shape == (3, 36, 48)  # 48 * 480 / 640 = 36 rows kept


def test_geometry_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive integers"):
        anyres.select_best_resolution((0, 10), PINPOINTS)
    with pytest.raises(ValueError, match=r"\(height, width\) pair"):
        anyres.unpadded_size((10, 10, 3), (4, 4))
    with pytest.raises(ValueError, match="non-empty list"):
        anyres.check_pinpoints([])


# ---- forward parity -----------------------------------------------------------------------------------

def test_state_dict_has_the_hub_layout(pair):
    _, ours = pair
    keys = set(ours.state_dict())
    assert "image_newline" in keys and ours.image_newline.shape == (64,)
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_2.weight" in keys
    hf, _ = pair
    assert torch.equal(ours.image_newline, hf.model.image_newline)


@pytest.mark.parametrize("names", [["chelsea"], ["wide", "tall"], ["astronaut", "horse"]])
def test_one_prompt_matches_transformers(pair, processor, images, names):
    hf, ours = pair
    text = "USER: " + "".join("<image>\n" for _ in names) + "Compare these. ASSISTANT:"
    inputs = processor(images=[images[n] for n in names], text=text, return_tensors="pt")
    a, b = run_both(hf, ours, **inputs, output_hidden_states=True)
    assert isinstance(b, LlavaCausalLMOutputWithPast)
    assert_close(b.logits, a.logits)
    n_tokens = int((inputs["input_ids"] == IMAGE).sum())
    assert image_features(b).shape == (n_tokens, 64)
    assert_close(image_features(b), image_features(a))
    assert len(b.image_outputs.pooler_output) == len(names)
    assert b.image_outputs.last_hidden_state.shape[0] == inputs["pixel_values"].shape[1] * len(names)  # all crops
    for x, y in zip(b.hidden_states, a.hidden_states, strict=True):
        assert_close(x, y)


def test_packed_layout_base_then_rows_each_ending_in_the_newline(pair, processor, images):
    _, ours = pair
    inputs = processor(images=images["wide"], text=PROMPT, return_tensors="pt")
    (rows, cols), = grids(inputs)
    assert (rows, cols) == (1, 3)
    with torch.no_grad():
        packed, = ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output
    h, w = anyres.unpadded_size(inputs["image_sizes"][0], (rows * 4, cols * 4))
    assert packed.shape == (16 + h * (w + 1), 64) and int((inputs["input_ids"] == IMAGE).sum()) == packed.shape[0]
    newlines = packed[16:].view(h, w + 1, 64)[:, -1]  # (h, Ht): the last token of every row
    assert torch.equal(newlines, ours.image_newline.expand(h, 64))


def test_get_image_features_matches_transformers_for_5d_and_flat_pixels(pair, processor, images):
    hf, ours = pair
    inputs = processor(images=[images["chelsea"], images["tall"], images["camera"]], text=[PROMPT] * 3,
                       padding=True, return_tensors="pt")
    pixel_values, sizes = inputs["pixel_values"], inputs["image_sizes"]
    counts = [anyres.image_size_to_num_patches(s, PINPOINTS, CROP) for s in sizes]
    assert len(set(counts)) > 1 and max(counts) == pixel_values.shape[1]  # batch padding in the crop dim
    with torch.no_grad():
        hf_out, ours_out = hf.get_image_features(pixel_values, sizes), ours.get_image_features(pixel_values, sizes)
        theirs, ours_5d = hf_out.pooler_output, ours_out.pooler_output
        flat = torch.cat([p[:n] for p, n in zip(pixel_values, counts)])
        ours_flat = ours.get_image_features(flat, sizes.tolist()).pooler_output
    assert ours_out.keys() == list(hf_out.keys())
    assert_close(ours_out.last_hidden_state, hf_out.last_hidden_state)  # (sum(counts), 1 + P, Hv)
    assert len(ours_5d) == len(theirs) == 3
    for x, y, z in zip(ours_5d, ours_flat, theirs, strict=True):
        assert_close(x, z)
        assert torch.equal(x, y)


def test_padding_crops_are_not_encoded(pair, processor, images):
    _, ours = pair
    inputs = processor(images=[images["wide"], images["chelsea"]], text=[PROMPT] * 2, padding=True,
                       return_tensors="pt")
    garbage = inputs["pixel_values"].clone()
    n_wide = anyres.image_size_to_num_patches(inputs["image_sizes"][0], PINPOINTS, CROP)
    n_cat = anyres.image_size_to_num_patches(inputs["image_sizes"][1], PINPOINTS, CROP)
    assert n_wide < n_cat == garbage.shape[1]
    garbage[0, n_wide:] = float("nan")  # the wide image's padding crop
    with torch.no_grad():
        clean = ours(**inputs).logits
        dirty = ours(**dict(inputs, pixel_values=garbage)).logits
    assert torch.equal(clean, dirty)


def test_left_padded_batch_of_three_prompts_matches_transformers(pair, processor, images):
    """The batched multi-image example of the NeXT docs: prompts with 2, 1 and 1 images of different sizes."""
    hf, ours = pair
    texts = ["USER: <image>\n<image>\nWhat differs between these two images? ASSISTANT:",
             "USER: <image>\nWhat is this? ASSISTANT:", PROMPT]
    inputs = processor(images=[images["chelsea"], images["wide"], images["tall"], images["small"]],
                       text=texts, padding=True, return_tensors="pt")
    assert len(set(grids(inputs))) == 4 and inputs["attention_mask"][:, 0].tolist().count(0) == 2
    a, b = run_both(hf, ours, **with_positions(inputs))
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))
    with torch.no_grad():  # each row alone gives the same logits
        alone = processor(images=[images["tall"]], text=texts[1], return_tensors="pt")
        alone_logits = ours(**alone).logits
    assert_close(b.logits[1, -alone_logits.shape[1]:], alone_logits[0])


def test_text_only_matches_transformers(pair, processor):
    hf, ours = pair
    inputs = processor(text=["USER: Hello there ASSISTANT:", "USER: Hi ASSISTANT:"], padding=True,
                       return_tensors="pt")
    a, b = run_both(hf, ours, **with_positions(inputs))
    assert b.image_outputs is None and newest_keys(a) == b.keys()
    assert_close(b.logits, a.logits)


def test_loss_matches_transformers(pair, processor, images):
    hf, ours = pair
    inputs = processor(images=[images["coffee"], images["horse"]], text=[PROMPT + " A cup.", PROMPT],
                       padding=True, return_tensors="pt")
    labels = inputs["input_ids"].masked_fill((inputs["input_ids"] == IMAGE) | (inputs["attention_mask"] == 0), -100)
    a, b = run_both(hf, ours, **with_positions(inputs), labels=labels)
    assert b.loss.ndim == 0
    assert_close(b.loss, a.loss)


def test_inputs_embeds_find_the_image_positions(pair, processor, images):
    hf, ours = pair
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    embeds = ours.get_input_embeddings()(inputs["input_ids"])
    kwargs = dict(inputs_embeds=embeds, pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    a, b = run_both(hf, ours, **kwargs)
    with torch.no_grad():
        by_ids = ours(**inputs).logits
    assert_close(b.logits, a.logits)
    assert_close(b.logits, by_ids)


def test_vision_feature_layer_argument_matches_transformers(pair, processor, images):
    hf, ours = pair
    inputs = processor(images=images["rocket"], text=PROMPT, return_tensors="pt")
    a, b = run_both(hf, ours, **inputs, vision_feature_layer=-1)
    assert_close(b.logits, a.logits)
    with torch.no_grad():
        default = ours(**inputs).logits
    assert (default - b.logits).abs().max() > 1e-4  # the argument changed the features


@pytest.fixture(scope="module")
def multi_layer_dir(tmp_path_factory, tokenizer_dir):
    return assets.build_tiny_llava_next(tmp_path_factory.mktemp("llava-next-multilayer"), tokenizer_dir, seed=2,
                                 vision_feature_layer=[-3, -1])


def test_feature_layer_list_matches_transformers(multi_layer_dir, processor, images):
    hf = transformers.LlavaNextForConditionalGeneration.from_pretrained(multi_layer_dir).eval()
    ours = LlavaNextForConditionalGeneration.from_pretrained(multi_layer_dir)
    assert ours.config.vision_feature_layer == [-3, -1]
    assert ours.multi_modal_projector.linear_1.in_features == 2 * 32
    inputs = processor(images=[images["wide"], images["chelsea"]], text=[PROMPT, PROMPT], padding=True,
                       return_tensors="pt")
    a, b = run_both(hf, ours, **with_positions(inputs))
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))


def test_bfloat16_matches_transformers(next_dir, processor, images):
    hf = transformers.LlavaNextForConditionalGeneration.from_pretrained(next_dir, dtype=torch.bfloat16).eval()
    ours = LlavaNextForConditionalGeneration.from_pretrained(next_dir, dtype=torch.bfloat16)
    assert ours.image_newline.dtype == torch.bfloat16
    inputs = processor(images=[images["chelsea"], images["tall"]], text=[PROMPT, "USER: <image>\nHi ASSISTANT:"],
                       padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    a, b = run_both(hf, ours, **with_positions(inputs))
    assert b.logits.dtype == torch.bfloat16
    assert_close(b.logits.float(), a.logits.float(), atol=1e-3)


def test_llava_next_model_matches_transformers(next_dir, processor, images):
    hf = transformers.LlavaNextModel.from_pretrained(next_dir).eval()
    ours = LlavaNextModel.from_pretrained(next_dir)
    assert "image_newline" in ours.state_dict() and "language_model.embed_tokens.weight" in ours.state_dict()
    inputs = processor(images=images["coffee"], text=PROMPT, return_tensors="pt")
    a, b = run_both(hf, ours, **inputs)
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(image_features(b), image_features(a))


def test_auto_classes_dispatch_on_llava_next(next_dir):
    assert type(AutoConfig.from_pretrained(next_dir)) is LlavaNextConfig
    assert type(AutoModelForImageTextToText.from_pretrained(next_dir)) is LlavaNextForConditionalGeneration
    assert type(AutoModel.from_pretrained(next_dir)) is LlavaNextModel


def test_hub_layout_checkpoint_gives_the_same_logits(pair, next_dir, tmp_path, processor, images):
    _, ours = pair
    hub_dir = assets.to_hub_layout(next_dir, tmp_path / "hub")
    assert "image_newline" in json.loads((hub_dir / "model.safetensors.index.json").read_text())["weight_map"]
    hub = LlavaNextForConditionalGeneration.from_pretrained(hub_dir)
    inputs = processor(images=images["horse"], text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        assert_close(hub(**inputs).logits, ours(**inputs).logits, atol=0)


def test_save_pretrained_is_read_back_by_transformers(pair, tmp_path, processor, images):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "llava_next" and saved["image_grid_pinpoints"] == PINPOINTS
    reloaded = transformers.LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    a, b = run_both(reloaded, hf, **inputs)
    assert_close(a.logits, b.logits, atol=0)


def test_untied_head_when_only_the_text_config_ties(tmp_path, tokenizer_dir, processor, images):
    """transformers 5 ties a NeXT head only on the top-level flag, not on text_config.tie_word_embeddings."""
    path = assets.build_tiny_llava_next(tmp_path, tokenizer_dir, seed=3, text_overrides={"tie_word_embeddings": True})
    hf = transformers.LlavaNextForConditionalGeneration.from_pretrained(path).eval()
    ours = LlavaNextForConditionalGeneration.from_pretrained(path)
    assert hf.config.tie_word_embeddings is False and ours.config.tie_word_embeddings is False
    assert ours.get_output_embeddings().weight is not ours.get_input_embeddings().weight
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    a, b = run_both(hf, ours, **inputs)
    assert_close(b.logits, a.logits)


# ---- errors -------------------------------------------------------------------------------------------

def test_image_token_mismatch_errors(pair, processor, images):
    _, ours = pair
    inputs = processor(images=[images["chelsea"], images["wide"]], text="USER: <image>\n<image>\nHi ASSISTANT:",
                       return_tensors="pt")
    n_tokens = int((inputs["input_ids"] == IMAGE).sum())
    one_short = inputs["input_ids"].clone()
    one_short[0, (one_short[0] == IMAGE).nonzero()[0]] = 400
    with pytest.raises(ValueError, match=f"Image features and image tokens do not match: tokens: {n_tokens - 1}, "
                                         f"features: {n_tokens}"):
        ours(**dict(inputs, input_ids=one_short))
    with pytest.raises(ValueError, match=r"tokens: 0, features: \d+"):  # pixel_values at a decode step
        ours(input_ids=torch.tensor([[1, 400]]), pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    with pytest.raises(ValueError, match="needs image_sizes"):
        ours(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
    with pytest.raises(ValueError, match="holds 2 images but image_sizes gives 1"):
        ours(**dict(inputs, image_sizes=inputs["image_sizes"][:1]))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])


def test_pinpoints_mismatch_and_full_strategy_errors(pair, processor, images):
    _, ours = pair
    wide = processor(images=images["wide"], text=PROMPT, return_tensors="pt")  # 1x3 grid: 4 crops
    with pytest.raises(ValueError, match=r"need \[5\] crops.*only 4 per image.*same image_grid_pinpoints"):
        ours.get_image_features(wide["pixel_values"], [[500, 500]])  # a square takes the 2x2 grid: 5 crops
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")  # 2x2 grid: 5 crops
    with pytest.raises(ValueError, match="pixel_values has 4 crops"):
        ours.get_image_features(inputs["pixel_values"][0, :4], inputs["image_sizes"])
    with pytest.raises(ValueError, match="'full' keeps the CLS token"):
        ours.get_image_features(inputs["pixel_values"], inputs["image_sizes"], vision_feature_select_strategy="full")
    with pytest.raises(ValueError, match="positive integers"):
        ours.get_image_features(inputs["pixel_values"], [[0, 10]])


# ---- generate -----------------------------------------------------------------------------------------

def generate_both(hf, ours, inputs, max_new_tokens: int = 10):
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    mine = ours.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    assert mine.shape == theirs.shape and mine.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(mine, theirs), (mine, theirs)


def test_greedy_generate_one_image_matches_transformers(pair, processor, images):
    hf, ours = pair
    generate_both(hf, ours, processor(images=images["astronaut"], text=PROMPT, return_tensors="pt"))


def test_greedy_generate_two_images_of_different_sizes_in_one_prompt(pair, processor, images):
    hf, ours = pair
    inputs = processor(images=[images["wide"], images["coffee"]], return_tensors="pt",
                       text="USER: <image>\n<image>\nWhat do these two have in common? ASSISTANT:")
    assert len(set(grids(inputs))) == 2
    generate_both(hf, ours, inputs)


def test_greedy_generate_left_padded_batch_matches_transformers(pair, processor, images):
    hf, ours = pair
    texts = ["USER: <image>\n<image>\nWhat differs between these two images? ASSISTANT:",
             "USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nAnd this one, in a few words? ASSISTANT:"]
    inputs = processor(images=[images["tall"], images["chelsea"], images["wide"], images["horse"]], text=texts,
                       padding=True, return_tensors="pt")
    assert (inputs["attention_mask"] == 0).any()
    generate_both(hf, ours, inputs)


def test_greedy_generate_text_only_matches_transformers(pair, processor):
    hf, ours = pair
    inputs = processor(text=["USER: Tell me a story. ASSISTANT:", "USER: Hi ASSISTANT:"], padding=True,
                       return_tensors="pt")
    generate_both(hf, ours, inputs)


def test_random_model_built_from_a_config():
    config = LlavaNextConfig(vision_config=dict(assets.TINY_VISION), text_config=dict(assets.TINY_TEXT),
                             image_grid_pinpoints=PINPOINTS)
    model = LlavaNextForConditionalGeneration(config).eval()
    assert model.image_newline.shape == (64,) and model.image_newline.abs().sum() > 0
    pixel_values = torch.randn(1, 4, 3, CROP, CROP)  # a 100 x 10 strip: 3x1 grid + base
    assert anyres.unpadded_size((100, 10), (12, 4)) == (12, 2)  # 4 feature columns, 1 padded each side
    n_tokens = 16 + 12 * (2 + 1)  # base + 12 rows of 2 features and the newline
    ids = torch.tensor([[1] + [IMAGE] * n_tokens + [400, 500]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixel_values, image_sizes=torch.tensor([[100, 10]]))
    assert torch.isfinite(out.logits).all() and out.logits.shape == (1, n_tokens + 3, 32064)
