"""ViP-LLaVA against transformers' VipLlavaForConditionalGeneration on a tiny random checkpoint saved by transformers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from PIL import Image

from llavakit import AutoConfig, AutoModel, AutoModelForImageTextToText
from llavakit.config import VipLlavaConfig
from llavakit.models.outputs import LlavaCausalLMOutputWithPast
from llavakit.models.vipllava import VipLlavaForConditionalGeneration, VipLlavaModel, VipLlavaMultiModalProjector
from tests import assets
from tests.parity import assert_close, image_prompt, left_pad, random_pixels, run_both
from tests.reference import hf_processor, image_features, same_image_outputs, tuple_image_features

IMAGE, PAD = 32000, 32001
N_TOKENS = assets.IMAGE_TOKENS  # 16 per image, CLS always dropped
VISION_LAYERS = assets.VIP_VISION_LAYERS
ATOL = 1e-5
PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"


@pytest.fixture(scope="module")
def vip_dir(tiny_vipllava_dir):
    return tiny_vipllava_dir


@pytest.fixture(scope="module")
def vip_hub_dir(tmp_path_factory, vip_dir):
    """The published vip-llava layout: sharded, `vision_model.` keys, sparse config with the v4 key name."""
    dst = assets.to_hub_layout(vip_dir, tmp_path_factory.mktemp("tiny-vipllava-hub"))
    config = json.loads((dst / "config.json").read_text())
    config["vision_feature_layers"] = config.pop("vision_feature_layer")
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


@pytest.fixture(scope="module")
def pair(vip_dir):
    hf = transformers.VipLlavaForConditionalGeneration.from_pretrained(vip_dir).eval()
    return hf, VipLlavaForConditionalGeneration.from_pretrained(vip_dir)












def test_state_dict_has_the_hub_layout(pair):
    _, ours = pair
    keys = set(ours.state_dict())
    assert isinstance(ours.multi_modal_projector, VipLlavaMultiModalProjector)
    assert {"multi_modal_projector.projector_layernorm.weight", "multi_modal_projector.projector_layernorm.bias",
            "multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_2.bias"} <= keys
    assert ours.multi_modal_projector.projector_layernorm.normalized_shape == (5 * 32,)
    assert "vision_tower.vision_model.encoder.layers.9.mlp.fc1.weight" in keys
    assert "language_model.lm_head.weight" in keys


@pytest.mark.parametrize("n_images", [1, 2])
def test_logits_and_image_features_match_transformers(pair, n_images):
    hf, ours = pair
    ids = torch.tensor([image_prompt(n_images)])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values=random_pixels(n_images), output_hidden_states=True)
    assert isinstance(b, LlavaCausalLMOutputWithPast)
    assert_close(b.logits, a.logits)
    assert b.image_outputs.pooler_output.shape == (n_images, N_TOKENS, 64)  # one tensor, unlike LLaVA's list
    assert_close(image_features(b), image_features(a))
    assert same_image_outputs(b, a)  # ViP keeps only its five layers even with output_hidden_states=True
    assert sum(state is not None for state in b.image_outputs.hidden_states) == 4  # 5 layers, -11 and 0 the same
    for x, y in zip(b.hidden_states, a.hidden_states, strict=True):
        assert_close(x, y)
    with torch.no_grad():
        as_tuple = ours(input_ids=ids, pixel_values=random_pixels(n_images), return_dict=False)
        reference = hf(input_ids=ids, pixel_values=random_pixels(n_images), return_dict=False)
    assert len(as_tuple) == len(reference) == 3
    assert_close(tuple_image_features(as_tuple[2]), tuple_image_features(reference[2]))


def test_left_padded_batch_and_loss_match_transformers(pair):
    hf, ours = pair
    ids, mask, pos = left_pad([image_prompt(1, seed=1), image_prompt(2, seed=2)])
    labels = ids.masked_fill((ids == IMAGE) | (mask == 0), -100)
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=random_pixels(3),
                    labels=labels)
    assert_close(b.logits, a.logits)
    assert_close(b.loss, a.loss)
    assert b.loss.item() > 0


def test_get_image_features_matches_transformers(pair):
    hf, ours = pair
    with torch.no_grad():
        ours_out, hf_out = ours.get_image_features(random_pixels(2)), hf.get_image_features(random_pixels(2))
    assert ours_out.keys() == list(hf_out.keys())
    assert ours_out.pooler_output.shape == (2, N_TOKENS, 64)
    assert_close(ours_out.pooler_output, hf_out.pooler_output)
    assert_close(ours_out.last_hidden_state, hf_out.last_hidden_state)
    assert [s is None for s in ours_out.hidden_states] == [s is None for s in hf_out.hidden_states]


def test_features_are_the_listed_layers_without_cls_in_list_order(pair):
    _, ours = pair
    tower, projector = ours.vision_tower, ours.multi_modal_projector
    with torch.no_grad():
        states = tower(random_pixels(1), output_hidden_states=True).hidden_states  # 11 states
        by_hand = torch.cat([states[i][:, 1:] for i in (-2, -5, -8, -11, 6)], dim=-1)  # (1, 16, 160)
        assert_close(ours.get_image_features(random_pixels(1)).pooler_output, projector(by_hand), atol=0)
        swapped = torch.cat([states[i][:, 1:] for i in (6, -5, -8, -11, -2)], dim=-1)
        assert_close(ours.get_image_features(random_pixels(1), [6, -5, -8, -11, -2]).pooler_output, projector(swapped),
                     atol=0)


def test_layer_argument_under_either_name(pair):
    hf, ours = pair
    layers = [1, 2, 3, 4, 5]
    ids = torch.tensor([image_prompt(1, seed=3)])
    with torch.no_grad():
        reference = hf(input_ids=ids, pixel_values=random_pixels(1), vision_feature_layer=layers).logits
        v4 = ours(input_ids=ids, pixel_values=random_pixels(1), vision_feature_layers=layers).logits
        v5 = ours(input_ids=ids, pixel_values=random_pixels(1), vision_feature_layer=layers).logits
        default = ours(input_ids=ids, pixel_values=random_pixels(1)).logits
        assert_close(ours.get_image_features(random_pixels(1), vision_feature_layer=layers).pooler_output,
                     ours.get_image_features(random_pixels(1), vision_feature_layers=layers).pooler_output, atol=0)
    assert_close(v4, reference)
    assert_close(v5, reference)
    assert (v4 - default).abs().max() > 1e-3  # the argument is used
    with pytest.raises(ValueError, match="two names for the same argument"):
        ours(input_ids=ids, pixel_values=random_pixels(1), vision_feature_layers=layers, vision_feature_layer=[1, 2, 3, 4, 6])
    with pytest.raises(ValueError, match="selects 2 layer.*built for 5"):
        ours.get_image_features(random_pixels(1), [-2, -3])
    with pytest.raises(ValueError, match="non-empty list of ints, got \\[\\]"):
        ours.get_image_features(random_pixels(1), [])
    with pytest.raises(ValueError, match="vision feature layer 11 is out of range.*10 layers"):
        ours.get_image_features(random_pixels(1), [-2, -5, -8, -11, 11])


def test_vipllava_model_matches_transformers(vip_dir):
    hf = transformers.VipLlavaModel.from_pretrained(vip_dir).eval()
    ours = VipLlavaModel.from_pretrained(vip_dir)
    assert "language_model.embed_tokens.weight" in ours.state_dict()
    ids = torch.tensor([image_prompt(1, seed=4)])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values=random_pixels(1))
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(image_features(b), image_features(a))


def test_hub_layout_with_the_v4_key_name_gives_the_same_logits(pair, vip_hub_dir):
    _, ours = pair
    config = json.loads((vip_hub_dir / "config.json").read_text())
    assert "vision_feature_layers" in config and "vision_feature_layer" not in config
    hub = VipLlavaForConditionalGeneration.from_pretrained(vip_hub_dir)
    assert hub.config.vision_feature_layers == [-2, -5, -8, -11, 6]
    reference = transformers.VipLlavaForConditionalGeneration.from_pretrained(vip_hub_dir).eval()
    ids = torch.tensor([image_prompt(1, seed=5)])
    with torch.no_grad():
        logits = hub(input_ids=ids, pixel_values=random_pixels(1)).logits
        assert_close(logits, ours(input_ids=ids, pixel_values=random_pixels(1)).logits, atol=0)
        assert_close(logits, reference(input_ids=ids, pixel_values=random_pixels(1)).logits)


def test_save_pretrained_is_read_back_by_transformers(pair, tmp_path):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "vipllava" and saved["vision_feature_layers"] == [-2, -5, -8, -11, 6]
    reloaded = transformers.VipLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert list(reloaded.config.vision_feature_layer) == [-2, -5, -8, -11, 6]
    ids = torch.tensor([image_prompt(1, seed=6)])
    with torch.no_grad():
        assert_close(reloaded(input_ids=ids, pixel_values=random_pixels(1)).logits,
                     hf(input_ids=ids, pixel_values=random_pixels(1)).logits, atol=0)


def test_auto_classes_dispatch_on_vipllava(vip_dir):
    assert type(AutoConfig.from_pretrained(vip_dir)) is VipLlavaConfig
    model = AutoModelForImageTextToText.from_pretrained(vip_dir)
    assert type(model) is VipLlavaForConditionalGeneration
    assert type(AutoModel.from_pretrained(vip_dir)) is VipLlavaModel


def test_image_token_mismatch_errors(pair):
    _, ours = pair
    one_short = image_prompt(1)
    one_short.remove(IMAGE)
    with pytest.raises(ValueError, match="Image features and image tokens do not match: tokens: 15, features: 16"):
        ours(input_ids=torch.tensor([one_short]), pixel_values=random_pixels(1))
    with pytest.raises(ValueError, match="tokens: 16, features: 32"):
        ours(input_ids=torch.tensor([image_prompt(1)]), pixel_values=random_pixels(2))


@pytest.fixture(scope="module")
def processor(vip_dir):
    processor = hf_processor(vip_dir)
    processor.tokenizer.padding_side = "left"
    return processor


@pytest.fixture(scope="module")
def images(photos):
    return {name: Image.open(path) for name, path in photos.items()}


def test_greedy_generate_single_image_matches_transformers(pair, processor, images):
    hf, ours = pair
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"] == IMAGE).sum()) == N_TOKENS
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    mine = ours.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert mine.shape == theirs.shape and mine.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(mine, theirs), (mine, theirs)


def test_greedy_generate_left_padded_batch_matches_transformers(pair, processor, images):
    hf, ours = pair
    texts = [PROMPT, "USER: <image>\nWhat? ASSISTANT:"]
    inputs = processor(images=[images["astronaut"], images["coffee"]], text=texts, padding=True,
                       return_tensors="pt")
    assert inputs["attention_mask"][1, 0] == 0  # the shorter row is left-padded
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    mine = ours.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert torch.equal(mine, theirs), (mine, theirs)


def test_random_model_built_from_a_config():
    config = VipLlavaConfig(vision_config=dict(assets.TINY_VISION), text_config=dict(assets.TINY_TEXT),
                            vision_feature_layers=[-2, -3, 1])
    model = VipLlavaForConditionalGeneration(config).eval()
    norm = model.multi_modal_projector.projector_layernorm
    assert torch.equal(norm.weight, torch.ones(96)) and torch.equal(norm.bias, torch.zeros(96))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([image_prompt(1)]), pixel_values=random_pixels(1))
    assert torch.isfinite(out.logits).all() and out.logits.shape == (1, 24, 32064)
