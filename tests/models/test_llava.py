"""LLaVA against transformers' LlavaForConditionalGeneration on the tiny checkpoints of tests/conftest.py."""

from __future__ import annotations

import pytest
import torch
import transformers

from llavakit.config import LlavaConfig
from llavakit.models.cache import DynamicCache
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel
from llavakit.models.outputs import LlavaCausalLMOutputWithPast
from tests import assets
from tests.parity import assert_close, image_prompt, left_pad, random_pixels, run_both
from tests.reference import image_features, newest_keys, same_image_outputs, tuple_image_features

IMAGE, PAD = 32000, 32001
N_TOKENS = assets.IMAGE_TOKENS  # 16 per image with the "default" strategy
ATOL = 1e-5


@pytest.fixture(scope="module")
def pair(tiny_llava_dir):
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    return hf, ours


@pytest.fixture(scope="module")
def eager_pair(tiny_llava_dir):
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager")
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, attn_implementation="eager")
    return hf.eval(), ours












def test_state_dict_has_the_hub_layout(pair):
    _, ours = pair
    keys = set(ours.state_dict())
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "language_model.model.layers.1.self_attn.q_proj.weight" in keys
    assert "language_model.lm_head.weight" in keys and "multi_modal_projector.linear_1.bias" in keys
    assert all(k.split(".")[0] in {"vision_tower", "multi_modal_projector", "language_model"} for k in keys)


@pytest.mark.parametrize("n_images", [1, 2])
def test_one_prompt_matches_transformers(pair, n_images):
    hf, ours = pair
    ids = torch.tensor([image_prompt(n_images)])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values=random_pixels(n_images), output_hidden_states=True)
    assert isinstance(b, LlavaCausalLMOutputWithPast)
    assert_close(b.logits, a.logits)
    assert image_features(b).shape == (n_images * N_TOKENS, 64)
    assert_close(image_features(b), image_features(a))
    assert [f.shape for f in b.image_outputs.pooler_output] == [(N_TOKENS, 64)] * n_images
    assert same_image_outputs(b, a)  # output_hidden_states=True: every tower layer kept, as transformers does
    assert all(state is not None for state in b.image_outputs.hidden_states)
    for x, y in zip(b.hidden_states, a.hidden_states, strict=True):
        assert_close(x, y)


def test_image_features_are_used(pair):
    _, ours = pair
    ids = torch.tensor([image_prompt(1)])
    with torch.no_grad():
        first = ours(input_ids=ids, pixel_values=random_pixels(1, seed=0)).logits
        other = ours(input_ids=ids, pixel_values=random_pixels(1, seed=1)).logits
    assert (first[0, -1] - other[0, -1]).abs().max() > 1e-3
    assert_close(first[0, :4], other[0, :4])  # text before the image cannot see it


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_matches_transformers(pair, eager_pair, attn):
    hf, ours = pair if attn == "sdpa" else eager_pair
    ids, mask, pos = left_pad([image_prompt(1, seed=1), image_prompt(2, seed=2)])
    assert mask[0].sum() < mask.shape[1]  # row 0 is padded
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=random_pixels(3))
    assert not torch.isnan(b.logits).any()
    assert_close(b.logits, a.logits)
    # each row equals running it alone
    with torch.no_grad():
        alone = ours(input_ids=torch.tensor([image_prompt(2, seed=2)]), pixel_values=random_pixels(3)[1:]).logits
    assert_close(b.logits[1], alone[0])


def test_bfloat16_matches_transformers(tiny_llava_dir):
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.bfloat16).eval()
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=torch.bfloat16)
    ids, mask, pos = left_pad([image_prompt(1, seed=1), image_prompt(1, seed=2)[:-2]])
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=random_pixels(2))
    assert b.logits.dtype == torch.bfloat16
    assert_close(b.logits.float(), a.logits.float(), atol=1e-3)  # same ops in the same order: ~bit-equal


def test_text_only_matches_transformers(pair):
    hf, ours = pair
    ids, mask, pos = left_pad([[1, 400, 500, 600, 700], [1, 800, 900]])
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos)
    assert b.image_outputs is None and "image_outputs" not in b and newest_keys(a) == b.keys()
    assert_close(b.logits, a.logits)


def test_loss_matches_transformers(pair):
    hf, ours = pair
    ids, mask, pos = left_pad([image_prompt(1, seed=3), image_prompt(1, seed=4)[:-2]])
    labels = ids.clone()
    labels[(ids == IMAGE) | (mask == 0)] = -100
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=random_pixels(2),
                    labels=labels)
    assert_close(b.loss, a.loss)


def test_loss_backward_reaches_every_part(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).train()
    ids = torch.tensor([image_prompt(1, seed=3)])
    labels = ids.masked_fill(ids == IMAGE, -100)
    model(input_ids=ids, pixel_values=random_pixels(1), labels=labels).loss.backward()
    for name in ("vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight", "multi_modal_projector.linear_1.weight",
                 "language_model.model.layers.0.self_attn.q_proj.weight", "language_model.lm_head.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_kv_cache_decode_matches_full_forward(pair):
    hf, ours = pair
    ids, mask, pos = left_pad([image_prompt(1, seed=5), image_prompt(1, seed=6)[:-1]])
    prefill = ids.shape[1] - 3  # both rows' image tokens are in the prefill
    with torch.no_grad():
        full = ours(input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=random_pixels(2)).logits
        out = ours(input_ids=ids[:, :prefill], attention_mask=mask[:, :prefill], position_ids=pos[:, :prefill],
                   pixel_values=random_pixels(2), use_cache=True, logits_to_keep=1)
        steps = [out.logits]
        for t in range(prefill, ids.shape[1]):  # decode steps: no pixel_values, as generate() does
            out = ours(input_ids=ids[:, t:t + 1], attention_mask=mask[:, :t + 1], position_ids=pos[:, t:t + 1],
                       cache=out.cache, use_cache=True, logits_to_keep=1)
            steps.append(out.logits)
    assert isinstance(out.cache, DynamicCache)
    assert_close(torch.cat(steps, dim=1), full[:, prefill - 1:])


def test_inputs_embeds_find_the_image_positions(pair):
    hf, ours = pair
    ids = torch.tensor([image_prompt(1, seed=7)])
    embeds = ours.get_input_embeddings()(ids)
    with torch.no_grad():
        by_ids = ours(input_ids=ids, pixel_values=random_pixels(1)).logits
        by_embeds = ours(inputs_embeds=embeds, pixel_values=random_pixels(1)).logits
        reference = hf(inputs_embeds=embeds, pixel_values=random_pixels(1)).logits
    assert_close(by_embeds, by_ids)
    assert_close(by_embeds, reference)


def test_get_image_features_matches_transformers(pair):
    hf, ours = pair
    with torch.no_grad():
        ours_out, hf_out = ours.get_image_features(random_pixels(2)), hf.get_image_features(random_pixels(2))
        ours_full = torch.stack(ours.get_image_features(random_pixels(2), vision_feature_select_strategy="full")
                                .pooler_output)
        hf_full = torch.stack(hf.get_image_features(random_pixels(2), vision_feature_select_strategy="full").pooler_output)
    assert type(ours_out).__name__ == type(hf_out).__name__ == "BaseModelOutputWithPooling"
    assert ours_out.keys() == list(hf_out.keys()) == ["last_hidden_state", "pooler_output", "hidden_states"]
    assert isinstance(ours_out.pooler_output, list) and len(ours_out.pooler_output) == 2
    assert ours_out.pooler_output[0].shape == (N_TOKENS, 64)
    assert_close(torch.stack(ours_out.pooler_output), torch.stack(hf_out.pooler_output))
    assert_close(ours_out.last_hidden_state, hf_out.last_hidden_state)
    assert [s is None for s in ours_out.hidden_states] == [s is None for s in hf_out.hidden_states]
    assert_close(ours_out.hidden_states[-2], hf_out.hidden_states[-2])  # the selected layer
    assert_close(ours_full, hf_full)


@pytest.fixture(scope="module")
def multi_layer_dir(tmp_path_factory, tokenizer_dir):
    return assets.build_tiny_llava(tmp_path_factory.mktemp("llava-multilayer"), tokenizer_dir, seed=2,
                                   vision_feature_layer=[-2, -1], vision_feature_select_strategy="full")


def test_feature_layer_list_and_full_strategy_match_transformers(multi_layer_dir):
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(multi_layer_dir).eval()
    ours = LlavaForConditionalGeneration.from_pretrained(multi_layer_dir)
    assert ours.config.vision_feature_layer == [-2, -1]
    assert ours.multi_modal_projector.linear_1.in_features == 2 * 32
    per_image = N_TOKENS + 1  # "full" keeps CLS
    ids = torch.tensor([image_prompt(2, per_image=per_image)])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values=random_pixels(2))
    assert_close(b.logits, a.logits)
    assert_close(image_features(b), image_features(a))
    with pytest.raises(ValueError, match="selects 1 layer"):
        ours.get_image_features(random_pixels(1), vision_feature_layer=-1)


def test_mistral_decoder_with_sliding_window(tiny_mistral_llava_dir):
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir).eval()
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir)
    assert type(ours.language_model).__name__ == "MistralForCausalLM"
    assert ours.config.text_config.sliding_window == 8
    ids, mask, pos = left_pad([image_prompt(1, seed=8), image_prompt(1, seed=9)[:-2]])  # 24 tokens > window
    a, b = run_both(hf, ours, input_ids=ids, attention_mask=mask, position_ids=pos, pixel_values=random_pixels(2))
    assert_close(b.logits, a.logits)


def test_llava_model_matches_transformers(tiny_llava_dir):
    hf = transformers.LlavaModel.from_pretrained(tiny_llava_dir).eval()
    ours = LlavaModel.from_pretrained(tiny_llava_dir)
    assert "language_model.embed_tokens.weight" in ours.state_dict()
    ids = torch.tensor([image_prompt(1, seed=10)])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values=random_pixels(1))
    assert b.keys() == newest_keys(a) == ["last_hidden_state", "cache", "image_outputs"]
    assert_close(b.last_hidden_state, a.last_hidden_state)
    assert_close(image_features(b), image_features(a))


def test_hub_layout_checkpoint_gives_the_same_logits(pair, tiny_llava_hub_dir):
    _, ours = pair
    hub = LlavaForConditionalGeneration.from_pretrained(tiny_llava_hub_dir)
    ids = torch.tensor([image_prompt(1, seed=11)])
    with torch.no_grad():
        assert_close(hub(input_ids=ids, pixel_values=random_pixels(1)).logits,
                     ours(input_ids=ids, pixel_values=random_pixels(1)).logits)


def test_attentions_match_transformers(eager_pair):
    hf, ours = eager_pair
    ids = torch.tensor([image_prompt(1, seed=12)])
    a, b = run_both(hf, ours, input_ids=ids, pixel_values=random_pixels(1), output_attentions=True)
    assert len(b.attentions) == len(a.attentions) == 2
    for x, y in zip(b.attentions, a.attentions):
        assert_close(x, y)


def test_image_token_mismatch_errors(pair):
    _, ours = pair
    one_short = image_prompt(1)
    one_short.remove(IMAGE)
    with pytest.raises(ValueError, match="Image features and image tokens do not match: tokens: 15, features: 16"):
        ours(input_ids=torch.tensor([one_short]), pixel_values=random_pixels(1))
    with pytest.raises(ValueError, match="tokens: 16, features: 32.*2 image"):
        ours(input_ids=torch.tensor([image_prompt(1)]), pixel_values=random_pixels(2))
    with pytest.raises(ValueError, match="tokens: 0, features: 16"):  # pixel_values at a decode step
        ours(input_ids=torch.tensor([[1, 400]]), pixel_values=random_pixels(1))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        ours(pixel_values=random_pixels(1))
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        ours.get_image_features(random_pixels(1), vision_feature_select_strategy="cls")


def test_return_dict_false_and_output_access(pair):
    hf, ours = pair
    ids = torch.tensor([image_prompt(1)])
    with torch.no_grad():
        ours_tuple = ours(input_ids=ids, pixel_values=random_pixels(1), return_dict=False)
        hf_tuple = hf(input_ids=ids, pixel_values=random_pixels(1), return_dict=False)
        out = ours(input_ids=ids, pixel_values=random_pixels(1))
    assert isinstance(ours_tuple, tuple) and len(ours_tuple) == len(hf_tuple) == 3
    assert_close(ours_tuple[0], hf_tuple[0])
    assert_close(tuple_image_features(ours_tuple[2]), tuple_image_features(hf_tuple[2]))
    assert out.keys() == ["logits", "cache", "image_outputs"]
    assert isinstance(ours_tuple[2], tuple) and len(ours_tuple[2]) == len(out.image_outputs.to_tuple())
    assert out["logits"] is out.logits is out[0]
    assert list(out) == out.keys()


def test_compatibility_arguments(pair):
    hf, ours = pair
    ids = torch.tensor([image_prompt(1)])
    with torch.no_grad():
        full = ours(input_ids=ids, pixel_values=random_pixels(1)).logits
        kept = ours(input_ids=ids, pixel_values=random_pixels(1), num_logits_to_keep=2, cache_position=torch.arange(24),
                    image_sizes=torch.tensor([[28, 28]])).logits
        reference = hf(input_ids=ids, pixel_values=random_pixels(1), logits_to_keep=2).logits
    assert_close(kept, full[:, -2:])
    assert_close(kept, reference)


def test_random_model_built_from_a_config():
    config = LlavaConfig(vision_config=dict(assets.TINY_VISION), text_config=dict(assets.TINY_TEXT))
    model = LlavaForConditionalGeneration(config).eval()
    assert list(model.named_buffers()) == []
    assert torch.equal(model.multi_modal_projector.linear_1.bias, torch.zeros(64))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([image_prompt(1)]), pixel_values=random_pixels(1))
    assert torch.isfinite(out.logits).all() and out.logits.shape == (1, 24, 32064)
    tied = LlavaForConditionalGeneration(LlavaConfig(vision_config=dict(assets.TINY_VISION),
                                                     text_config=dict(assets.TINY_TEXT, tie_word_embeddings=True)))
    assert tied.get_output_embeddings().weight is tied.get_input_embeddings().weight
