"""Every other transformers `generate` option gives transformers' tokens: the logits processors and sampling
warpers (seeded draws), several sequences per prompt, max_time, attentions / hidden states, the `cache` name."""

import time

import pytest
import torch
import transformers

from llavakit import GenerationConfig
from tests.generation.test_beam_search import generate_both
from tests.generation.test_generate import (PROMPT, TEXT_ONLY, assert_same_tokens, batch_of_three,  # noqa: F401
                                            images, llava, processor)

SAMPLING = [
    dict(min_p=0.05),
    dict(typical_p=0.8, top_k=0),
    dict(epsilon_cutoff=3e-4, top_k=0),
    dict(eta_cutoff=1e-3, top_k=0),
    dict(top_h=0.4, top_k=0),
    dict(temperature=0.8, top_p=0.9, min_p=0.02, renormalize_logits=True),
    dict(num_return_sequences=3, top_k=30),
    dict(num_return_sequences=2, watermarking_config={"bias": 5.0, "greenlist_ratio": 0.5}),
    dict(num_return_sequences=2, watermarking_config={"seeding_scheme": "selfhash", "context_width": 2}),
]


@pytest.mark.parametrize("options", SAMPLING)
def test_seeded_sampling_options_on_a_left_padded_image_batch(llava, processor, images, options):
    if "watermarking_config" in options:  # transformers wants its own config class
        theirs_options = dict(options, watermarking_config=transformers.WatermarkingConfig(
            **options["watermarking_config"]))
    else:
        theirs_options = options
    inputs = batch_of_three(processor, images)
    ours, theirs = llava
    torch.manual_seed(11)
    a = ours.generate(**inputs, max_new_tokens=8, do_sample=True, **options)
    torch.manual_seed(11)
    b = theirs.generate(**inputs, max_new_tokens=8, do_sample=True, **theirs_options)
    assert a.shape[0] == 3 * options.get("num_return_sequences", 1)
    assert_same_tokens(a, b)


def _new_tokens(llava, processor, images, n=6):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    return inputs, llava[0].generate(**inputs, max_new_tokens=n)[0, inputs["input_ids"].shape[1]:].tolist()


def test_greedy_processors(llava, processor, images):
    inputs, new = _new_tokens(llava, processor, images)
    prompt_len = inputs["input_ids"].shape[1]
    cases = [
        dict(no_repeat_ngram_size=1),
        dict(bad_words_ids=[[new[0]], [new[1], new[2]]]),
        dict(suppress_tokens=[new[0], new[3]]),
        dict(begin_suppress_tokens=[new[0]]),
        dict(sequence_bias={(new[0],): -20.0, (new[1], new[2]): -50.0, (new[4],): 9.0}),
        dict(sequence_bias=[[[new[2]], 30.0]]),
        dict(forced_eos_token_id=new[3], eos_token_id=2),
        dict(exponential_decay_length_penalty=(2, 3.0), eos_token_id=new[4]),
        dict(encoder_repetition_penalty=3.0),
        dict(guidance_scale=1.5),
        dict(forced_bos_token_id=5, renormalize_logits=True),
    ]
    for options in cases:
        ours, theirs = generate_both(llava, inputs, max_new_tokens=6, **options)
        assert_same_tokens(ours, theirs)
        if "bad_words_ids" in options:
            assert new[0] not in ours[0, prompt_len:].tolist()


def test_guidance_with_a_negative_prompt_on_a_batch(llava, processor, images):
    inputs = batch_of_three(processor, images)
    negative = processor(text=["USER: Say nothing. ASSISTANT:"] * 3, return_tensors="pt")
    ours, theirs = generate_both(llava, inputs, max_new_tokens=5, guidance_scale=2.0,
                                 negative_prompt_ids=negative["input_ids"],
                                 negative_prompt_attention_mask=negative["attention_mask"])
    assert_same_tokens(ours, theirs)


def test_processors_with_a_given_config_and_sampled_rows(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    config = GenerationConfig(do_sample=True, num_return_sequences=4, no_repeat_ngram_size=2, max_new_tokens=7,
                              repetition_penalty=1.2, top_k=40)
    torch.manual_seed(2)
    ours = llava[0].generate(**inputs, generation_config=config)
    torch.manual_seed(2)
    theirs = llava[1].generate(**inputs, generation_config=transformers.GenerationConfig(**config.to_diff_dict()))
    assert_same_tokens(ours, theirs)


def test_output_attentions_and_hidden_states(llava, processor, images, tiny_llava_dir):
    inputs = batch_of_three(processor, images)
    kwargs = dict(max_new_tokens=3, return_dict_in_generate=True, output_attentions=True, output_hidden_states=True)
    eager = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir,
                                                                       attn_implementation="eager").eval()
    ours, theirs = generate_both((llava[0], eager), inputs, **kwargs)
    assert_same_tokens(ours.sequences, theirs.sequences)
    for name in ("attentions", "hidden_states"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert len(a) == len(b) == 3
        for step_a, step_b in zip(a, b):
            assert len(step_a) == len(step_b)
            for x, y in zip(step_a, step_b):
                torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)


def test_max_time_stops_early(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")

    def slow(input_ids, scores):  # each step takes >= 20 ms, so 0.1 s allows only a few
        time.sleep(0.02)
        return scores

    out = llava[0].generate(**inputs, max_new_tokens=200, max_time=0.1, eos_token_id=None, logits_processor=[slow])
    assert 1 <= out.shape[1] - inputs["input_ids"].shape[1] <= 10


def test_cache_is_the_new_name_of_past_key_values(llava, processor):
    ours = llava[0]
    prompt = processor(text=TEXT_ONLY, return_tensors="pt")["input_ids"]
    first = ours.generate(input_ids=prompt, max_new_tokens=4, return_dict_in_generate=True,
                          cache_implementation="dynamic")
    assert "cache" in first.keys() and "past_key_values" not in first.keys()
    with pytest.warns(FutureWarning, match="read `.cache` instead"):
        assert first.past_key_values is first.cache
    import copy
    resumed = ours.generate(input_ids=first.sequences, cache=copy.deepcopy(first.cache), max_new_tokens=3)
    with pytest.warns(FutureWarning, match="pass cache=... instead"):
        old = ours.generate(input_ids=first.sequences, past_key_values=copy.deepcopy(first.cache), max_new_tokens=3)
    fresh = ours.generate(input_ids=first.sequences, max_new_tokens=3)
    assert torch.equal(resumed, fresh) and torch.equal(old, fresh)
