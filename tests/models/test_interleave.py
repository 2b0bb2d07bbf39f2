"""LLaVA-Interleave (SigLIP tower + Qwen2 decoder, "full" strategy, layer -1) against transformers, end to end.

The tiny checkpoint is built and saved by transformers with a LlavaProcessor around a SiglipImageProcessor,
as llava-hf/llava-interleave-qwen-*-hf are: every image gives (28 / 7)^2 = 16 tokens, none added, none dropped.
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch
import transformers

from llavakit.config import Qwen2Config, SiglipVisionConfig
from llavakit.models.auto import AutoModelForImageTextToText
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel
from llavakit.models.qwen2 import Qwen2ForCausalLM
from llavakit.models.siglip import SiglipVisionModel
from llavakit.processing.auto import AutoProcessor
from llavakit.processing.image_siglip import SiglipImageProcessor
from tests import assets
from tests.parity import assert_close
from tests.reference import image_features

IMAGE, PAD = 32000, 32001
N_TOKENS = 16  # 729 for the real 384 px / patch 14 tower
ATOL = 1e-5
VISION = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
              num_attention_heads=4, image_size=28, patch_size=7, vision_use_head=False)
TEXT = dict(model_type="qwen2", vocab_size=32064, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e6,
            tie_word_embeddings=True)


def build_interleave(out_dir, tokenizer_dir):
    """A tiny random interleave-style checkpoint + processor, saved by transformers 5."""
    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=dict(VISION), text_config=dict(TEXT), image_token_index=IMAGE,
                                      pad_token_id=PAD, vision_feature_select_strategy="full",
                                      vision_feature_layer=-1)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    assets.perturb_(model, 0)
    model.save_pretrained(out_dir)
    processor = transformers.LlavaProcessor(
        image_processor=transformers.SiglipImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=transformers.AutoTokenizer.from_pretrained(tokenizer_dir), patch_size=7,
        vision_feature_select_strategy="full", num_additional_image_tokens=0, chat_template=assets.LLAVA_15_TEMPLATE)
    processor.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def interleave_dir(tmp_path_factory, tokenizer_dir):
    return build_interleave(tmp_path_factory.mktemp("tiny-interleave"), tokenizer_dir)


@pytest.fixture(scope="module")
def interleave_hub_dir(tmp_path_factory, interleave_dir):
    return assets.to_hub_layout(interleave_dir, tmp_path_factory.mktemp("tiny-interleave-hub"))


@pytest.fixture(scope="module")
def pair(interleave_dir):
    transformers.logging.set_verbosity_error()
    return (transformers.LlavaForConditionalGeneration.from_pretrained(interleave_dir).eval(),
            LlavaForConditionalGeneration.from_pretrained(interleave_dir))


@pytest.fixture(scope="module")
def processors(interleave_dir):
    return transformers.AutoProcessor.from_pretrained(interleave_dir), AutoProcessor.from_pretrained(interleave_dir)


@pytest.fixture(scope="module")
def images(photos):
    return [PIL.Image.open(photos[name]) for name in ("astronaut", "chelsea", "coffee")]




def encode(processors, text, images, **kwargs):
    """The same call through transformers' processor and ours; asserts equal tensors, returns ours."""
    theirs, mine = processors
    a = theirs(images=images, text=text, return_tensors="pt", **kwargs)
    b = mine(images=images, text=text, return_tensors="pt", **kwargs)
    assert sorted(b.keys()) == sorted(a.keys())
    for key in a:
        assert torch.equal(b[key], a[key]), key
    return b


def test_built_from_the_config_types(pair):
    _, ours = pair
    assert isinstance(ours.config.vision_config, SiglipVisionConfig)
    assert isinstance(ours.config.text_config, Qwen2Config)
    assert type(ours.vision_tower) is SiglipVisionModel and type(ours.language_model) is Qwen2ForCausalLM
    assert ours.config.tie_word_embeddings is True  # forwarded from the text config
    assert ours.language_model.lm_head.weight is ours.language_model.model.embed_tokens.weight
    assert "vision_tower.vision_model.post_layernorm.weight" in ours.state_dict()


def test_processor_matches_transformers(processors, images):
    _, mine = processors
    assert type(mine.image_processor) is SiglipImageProcessor
    one = encode(processors, "USER: <image>\nWhat is this? ASSISTANT:", images[0])
    assert int((one["input_ids"] == IMAGE).sum()) == N_TOKENS
    assert tuple(one["pixel_values"].shape) == (1, 3, 28, 28)
    many = encode(processors, ["USER: <image><image>\nCompare. ASSISTANT:", "USER: <image>\nAnd? ASSISTANT:"],
                  images, padding=True, padding_side="left")
    assert int((many["input_ids"] == IMAGE).sum()) == 3 * N_TOKENS


@pytest.mark.parametrize("n_images", [1, 3])
def test_logits_match_transformers(pair, processors, images, n_images):
    hf, ours = pair
    text = "USER: " + "<image>" * n_images + "\nDescribe. ASSISTANT:"
    inputs = encode(processors, text, images[:n_images])
    with torch.no_grad():
        a, b = hf(**inputs), ours(**inputs)
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))


def test_features_are_the_last_layer_without_post_layernorm(pair, processors, images):
    _, ours = pair
    pixels = encode(processors, "<image>", images[0])["pixel_values"]
    with torch.no_grad():
        tower = ours.vision_tower(pixels, output_hidden_states=True)
        features = torch.stack(ours.get_image_features(pixels).pooler_output)
        expected = ours.multi_modal_projector(tower.hidden_states[-1])
        post_ln = ours.multi_modal_projector(tower.last_hidden_state)
    assert features.shape == (1, N_TOKENS, 64)
    assert_close(features, expected)
    assert (features - post_ln).abs().max() > 1e-3


def test_loss_matches_transformers(pair, processors, images):
    hf, ours = pair
    inputs = encode(processors, ["USER: <image>\nA cat? ASSISTANT: No.", "USER: <image>\nCoffee? ASSISTANT: Yes"],
                    images[:2], padding=True, padding_side="left")
    labels = inputs["input_ids"].clone()
    labels[(labels == IMAGE) | (inputs["attention_mask"] == 0)] = -100
    with torch.no_grad():
        a, b = hf(**inputs, labels=labels), ours(**inputs, labels=labels)
    assert_close(b.loss, a.loss)


@pytest.mark.parametrize("case", ["one-image", "multi-image", "left-padded-batch"])
def test_greedy_generate_matches_transformers(pair, processors, images, case):
    hf, ours = pair
    if case == "one-image":
        inputs = encode(processors, "USER: <image>\nWhat is this? ASSISTANT:", images[0])
    elif case == "multi-image":
        inputs = encode(processors, "USER: <image> and <image> and <image>\nSame? ASSISTANT:", images)
    else:
        inputs = encode(processors, ["USER: <image>\nHi ASSISTANT:", "USER: <image><image>\nTell me more. ASSISTANT:"],
                        images, padding=True, padding_side="left")
        assert inputs["attention_mask"][0].sum() < inputs["attention_mask"].shape[1]
    with torch.no_grad():
        theirs = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    mine = ours.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert mine.tolist() == theirs.tolist()


def test_hub_layout_gives_the_same_logits(pair, processors, images, interleave_hub_dir):
    hf, _ = pair
    ours = AutoModelForImageTextToText.from_pretrained(interleave_hub_dir)
    assert type(ours.vision_tower) is SiglipVisionModel
    processor = AutoProcessor.from_pretrained(interleave_hub_dir)
    assert type(processor.image_processor) is SiglipImageProcessor
    inputs = encode(processors, "USER: <image>\nWhat? ASSISTANT:", images[1])
    again = processor(images=images[1], text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    assert torch.equal(again["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        assert_close(ours(**inputs).logits, hf(**inputs).logits)


def test_save_and_reload_by_transformers(pair, processors, images, tmp_path):
    hf, ours = pair
    ours.save_pretrained(tmp_path)
    back = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = encode(processors, "USER: <image>\nWhat? ASSISTANT:", images[2])
    with torch.no_grad():
        assert_close(back(**inputs).logits, hf(**inputs).logits)


def test_base_model_matches_transformers(interleave_dir, processors, images):
    hf = transformers.LlavaModel.from_pretrained(interleave_dir).eval()
    ours = LlavaModel.from_pretrained(interleave_dir)
    inputs = encode(processors, "USER: <image>\nWhat? ASSISTANT:", images[0])
    with torch.no_grad():
        assert_close(ours(**inputs).last_hidden_state, hf(**inputs).last_hidden_state)
