"""generate() gives the same tokens as transformers' generate on the tiny checkpoints.

Inputs come from transformers' AutoProcessor on real photos, so these tests depend only on our models,
our loader and our generation code. Greedy tokens must be identical; seeded sampling must draw the same
tokens; lengths, EOS handling, stop strings and streaming follow transformers.
"""

import json
import logging
import shutil
import threading

import pytest
import torch
import transformers
from PIL import Image
from transformers.generation import streamers as tstreamers

from llavakit import GenerationConfig, LlavaForConditionalGeneration, TextIteratorStreamer
from llavakit.generation.utils import GenerationMixin
from llavakit.models.llama import LlamaForCausalLM
from llavakit.models.cache import DynamicCache, StaticCache
from tests.reference import comparable_stream, hf_processor

PROMPT = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
TWO_IMAGES = "USER: <image>\n<image>\nWhat differs between these two pictures? ASSISTANT:"
TEXT_ONLY = "USER: Tell me a short story about a cat. ASSISTANT:"


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    processor = hf_processor(tiny_llava_dir)
    processor.tokenizer.padding_side = "left"
    return processor


@pytest.fixture(scope="module")
def images(photos):
    return {name: Image.open(path) for name, path in photos.items()}


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    """(ours, theirs) for the tiny Llama-based LLaVA."""
    return (LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir),
            transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval())


@pytest.fixture(scope="module")
def mistral_llava(tiny_mistral_llava_dir):
    """(ours, theirs) for the tiny Mistral-based LLaVA with an 8-token sliding window."""
    return (LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir),
            transformers.LlavaForConditionalGeneration.from_pretrained(tiny_mistral_llava_dir).eval())


def both(models, inputs, **kwargs):
    """Generate with ours and transformers' from the same inputs; return both results."""
    ours, theirs = models
    return ours.generate(**inputs, **kwargs), theirs.generate(**inputs, **kwargs)


def assert_same_tokens(ours, theirs):
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    assert torch.equal(ours, theirs), (ours, theirs)


def test_models_are_generation_mixins():
    assert issubclass(LlavaForConditionalGeneration, GenerationMixin)
    assert issubclass(LlamaForCausalLM, GenerationMixin)


# ---- greedy parity -----------------------------------------------------------------------------
def test_greedy_single_image(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    ours, theirs = both(llava, inputs, max_new_tokens=20)
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 20
    assert torch.equal(ours[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_greedy_text_only(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    ours, theirs = both(llava, inputs, max_new_tokens=15)
    assert_same_tokens(ours, theirs)


def test_greedy_multi_image(llava, processor, images):
    inputs = processor(images=[images["astronaut"], images["coffee"]], text=TWO_IMAGES, return_tensors="pt")
    assert inputs["pixel_values"].shape[0] == 2
    ours, theirs = both(llava, inputs, max_new_tokens=12)
    assert_same_tokens(ours, theirs)


def batch_of_three(processor, images):
    texts = [TWO_IMAGES, PROMPT, "USER: <image>\nWhat? ASSISTANT:"]
    pictures = [images["rocket"], images["horse"], images["camera"], images["chelsea"]]
    inputs = processor(images=pictures, text=texts, padding=True, return_tensors="pt")
    assert (inputs["attention_mask"][:, 0] == 0).sum() == 2  # two rows are left-padded
    return inputs


def test_greedy_batch_of_three_left_padded(llava, processor, images):
    inputs = batch_of_three(processor, images)
    ours, theirs = both(llava, inputs, max_new_tokens=10)
    assert_same_tokens(ours, theirs)


def test_batched_rows_equal_their_single_runs(llava, processor, images):
    ours, _ = llava
    inputs = batch_of_three(processor, images)
    batched = ours.generate(**inputs, max_new_tokens=8)
    single = ours.generate(**processor(images=images["chelsea"], text="USER: <image>\nWhat? ASSISTANT:",
                                       return_tensors="pt"), max_new_tokens=8)
    assert torch.equal(batched[2, -8:], single[0, -8:])


def test_greedy_mistral_sliding_window_longer_prompt(mistral_llava, processor, images):
    ours_model = mistral_llava[0]
    assert ours_model.config.text_config.sliding_window == 8
    inputs = processor(images=images["coffee"], text=PROMPT, return_tensors="pt")
    assert inputs["input_ids"].shape[1] > 3 * 8  # the prompt is much longer than the window
    ours, theirs = both(mistral_llava, inputs, max_new_tokens=16)
    assert_same_tokens(ours, theirs)


def test_greedy_mistral_batch_left_padded(mistral_llava, processor, images):
    ours, theirs = both(mistral_llava, batch_of_three(processor, images), max_new_tokens=6)
    assert_same_tokens(ours, theirs)


def test_greedy_without_cache(llava, processor, images):
    inputs = batch_of_three(processor, images)
    ours, theirs = both(llava, inputs, max_new_tokens=5, use_cache=False)
    assert_same_tokens(ours, theirs)
    assert torch.equal(ours, llava[0].generate(**inputs, max_new_tokens=5))


# ---- sampling parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("options", [
    dict(do_sample=True),
    dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    dict(do_sample=True, temperature=1.5, top_k=0, top_p=0.5),
    dict(do_sample=True, top_k=None, repetition_penalty=1.3),
    dict(repetition_penalty=1.5),
])
def test_seeded_sampling_draws_the_same_tokens(llava, processor, images, options):
    inputs = batch_of_three(processor, images)
    results = []
    for model in llava:
        torch.manual_seed(1234)
        results.append(model.generate(**inputs, max_new_tokens=12, **options))
    assert_same_tokens(*results)


def test_sampling_differs_between_seeds(llava, processor, images):
    ours = llava[0]
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    torch.manual_seed(0)
    first = ours.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=2.0, top_k=0)
    torch.manual_seed(1)
    second = ours.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=2.0, top_k=0)
    assert not torch.equal(first, second)


# ---- stopping ----------------------------------------------------------------------------------
def greedy_new_tokens(model, inputs, n=12):
    out = model.generate(**inputs, max_new_tokens=n)
    return out[:, inputs["input_ids"].shape[1]:]


def test_eos_list_stops_rows_and_pads_them(llava, processor, images):
    inputs = batch_of_three(processor, images)
    new = greedy_new_tokens(llava[0], inputs)
    eos = [int(new[0, 3]), int(new[1, 1])]  # row 0 ends at its 4th token, row 1 at its 2nd
    ours, theirs = both(llava, inputs, max_new_tokens=12, eos_token_id=eos)
    assert_same_tokens(ours, theirs)
    generated = ours[:, inputs["input_ids"].shape[1]:]
    assert int(generated[1, 1]) in eos and (generated[1, 2:] == 32001).all()  # finished row gets <pad>
    if ours.shape[1] < inputs["input_ids"].shape[1] + 12:
        assert all(bool(torch.isin(row, torch.tensor(eos)).any()) for row in generated)


def test_all_rows_finished_stops_early(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    new = greedy_new_tokens(llava[0], inputs)
    ours, theirs = both(llava, inputs, max_new_tokens=12, eos_token_id=int(new[0, 2]))
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 3


def test_min_new_tokens_suppresses_eos(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    eos = int(greedy_new_tokens(llava[0], inputs)[0, 0])  # greedy would stop at once
    ours, theirs = both(llava, inputs, max_new_tokens=10, eos_token_id=eos, min_new_tokens=5)
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] >= inputs["input_ids"].shape[1] + 5
    ours, theirs = both(llava, inputs, max_new_tokens=10, eos_token_id=eos,
                        min_length=inputs["input_ids"].shape[1] + 3)
    assert_same_tokens(ours, theirs)


def test_stop_strings(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    new = greedy_new_tokens(llava[0], inputs)[0]
    tokenizer = processor.tokenizer
    text = tokenizer.decode(new[:5])
    stop = text[-3:] if len(text.strip()) >= 3 else text
    ours, theirs = both(llava, inputs, max_new_tokens=12, stop_strings=[stop, "zzzz"], tokenizer=tokenizer)
    assert_same_tokens(ours, theirs)
    generated = tokenizer.decode(ours[0, inputs["input_ids"].shape[1]:])
    assert stop in generated and ours.shape[1] < inputs["input_ids"].shape[1] + 12


def test_stop_strings_need_the_tokenizer(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        llava[0].generate(**inputs, max_new_tokens=3, stop_strings="cat")


class BanToken:
    """A caller's logits processor (the transformers protocol): never pick `token_id`."""

    def __init__(self, token_id):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        return scores.index_fill(1, torch.tensor([self.token_id]), -float("inf"))


class StopAfter:
    """A caller's stopping criterion: every row is done once the sequence has `length` tokens."""

    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


def test_custom_logits_processor_and_stopping_criteria(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    T = inputs["input_ids"].shape[1]
    plain = greedy_new_tokens(llava[0], inputs)[0]
    custom = dict(logits_processor=[BanToken(int(plain[0]))], stopping_criteria=[StopAfter(T + 4)])
    ours = llava[0].generate(**inputs, max_new_tokens=12, **custom)
    theirs = llava[1].generate(**inputs, max_new_tokens=12,
                               logits_processor=transformers.LogitsProcessorList(custom["logits_processor"]),
                               stopping_criteria=transformers.StoppingCriteriaList(custom["stopping_criteria"]))
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] == T + 4 and int(ours[0, T]) != int(plain[0])


# ---- lengths and defaults ----------------------------------------------------------------------
def test_max_length_counts_the_prompt(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    T = inputs["input_ids"].shape[1]
    ours, theirs = both(llava, inputs, max_length=T + 7)
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] == T + 7
    with pytest.raises(ValueError, match=f"the prompt has {T} tokens but max_length is {T}"):
        llava[0].generate(**inputs, max_length=T)


def test_default_length_is_20_new_tokens(llava, processor, images):
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    with pytest.warns(UserWarning, match="max_length"):
        ours = llava[0].generate(**inputs)
    with pytest.warns(UserWarning, match="max_length"):
        assert_same_tokens(ours, llava[1].generate(**inputs))
    assert ours.shape[1] == inputs["input_ids"].shape[1] + 20


def test_generation_config_json_defaults_are_honoured(tmp_path, tiny_llava_dir, processor, images):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_dir, folder)
    reference = LlavaForConditionalGeneration.from_pretrained(folder)
    inputs = processor(images=images["astronaut"], text=PROMPT, return_tensors="pt")
    eos = int(greedy_new_tokens(reference, inputs, 9)[0, -1])
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(max_new_tokens=9, eos_token_id=[2, eos], repetition_penalty=1.2)
    (folder / "generation_config.json").write_text(json.dumps(config))
    models = (LlavaForConditionalGeneration.from_pretrained(folder),
              transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval())
    assert models[0].generation_config.max_new_tokens == 9
    ours, theirs = both(models, inputs)
    assert_same_tokens(ours, theirs)
    assert ours.shape[1] <= inputs["input_ids"].shape[1] + 9
    # A kwarg overrides the file; a GenerationConfig passed in fills its unset options from the file.
    ours, theirs = both(models, inputs, max_new_tokens=3)
    assert_same_tokens(ours, theirs) and ours.shape[1] == inputs["input_ids"].shape[1] + 3
    ours = models[0].generate(**inputs, generation_config=GenerationConfig(max_new_tokens=4))
    theirs = models[1].generate(**inputs, generation_config=transformers.GenerationConfig(max_new_tokens=4))
    assert_same_tokens(ours, theirs)
    # A transformers GenerationConfig is accepted too (code written for transformers passes one).
    assert_same_tokens(models[0].generate(**inputs, generation_config=transformers.GenerationConfig(max_new_tokens=4)),
                       theirs)


def test_prompt_plus_new_tokens_beyond_context_is_an_error(llava, processor, images, monkeypatch):
    ours = llava[0]
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    T = inputs["input_ids"].shape[1]
    calls = []
    forward = ours.forward
    monkeypatch.setattr(ours, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    with pytest.raises(ValueError, match=f"prompt of {T} tokens \\+ 600 new tokens = {T + 600} exceeds the "
                                         "model's context of 512 tokens"):
        ours.generate(**inputs, max_new_tokens=600)
    assert calls == []  # checked before running the model

    monkeypatch.setattr(ours.config.text_config, "max_position_embeddings", T + 5)
    assert ours.generate(**inputs, max_new_tokens=5).shape[1] == T + 5  # exactly fills the context
    with pytest.raises(ValueError, match=f"= {T + 6} exceeds the model's context of {T + 5} tokens"):
        ours.generate(**inputs, max_new_tokens=6)
    with pytest.warns(UserWarning, match="default max_length"):
        assert ours.generate(**inputs).shape[1] == T + 5  # the default 20 new tokens are capped


def test_inputs_embeds_without_input_ids_returns_only_new_tokens(llava, processor):
    inputs = processor(text=[TEXT_ONLY, "USER: Hi ASSISTANT:"], padding=True, return_tensors="pt")
    ours_model, theirs_model = llava
    embeds = ours_model.get_input_embeddings()(inputs["input_ids"])
    ours = ours_model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=6)
    theirs = theirs_model.generate(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], max_new_tokens=6)
    assert_same_tokens(ours, theirs)
    assert ours.shape == (2, 6)
    assert torch.equal(ours, ours_model.generate(**inputs, max_new_tokens=6)[:, -6:])
    with_ids = dict(inputs, inputs_embeds=embeds, max_new_tokens=6)  # ids kept in the output, embeds fed
    assert_same_tokens(ours_model.generate(**with_ids), theirs_model.generate(**with_ids))
    assert torch.equal(ours_model.generate(**with_ids), ours_model.generate(**inputs, max_new_tokens=6))


def test_return_dict_in_generate_with_scores(llava, processor, images):
    inputs = batch_of_three(processor, images)
    kwargs = dict(max_new_tokens=5, return_dict_in_generate=True, output_scores=True, output_logits=True,
                  do_sample=True, temperature=0.8)
    torch.manual_seed(7)
    ours = llava[0].generate(**inputs, **kwargs)
    torch.manual_seed(7)
    theirs = llava[1].generate(**inputs, **kwargs)
    assert_same_tokens(ours.sequences, theirs.sequences)
    assert len(ours.scores) == len(theirs.scores) == 5 and len(ours.logits) == 5
    for a, b in zip(ours.scores + ours.logits, theirs.scores + theirs.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert ours["sequences"] is ours.sequences and ours.cache.get_seq_length() > 0


def test_continue_from_a_returned_cache(llava, processor, images):
    ours = llava[0]
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    first = ours.generate(**inputs, max_new_tokens=5, return_dict_in_generate=True)
    follow_up = processor.tokenizer(" USER: And then? ASSISTANT:", add_special_tokens=False,
                                    return_tensors="pt")["input_ids"]
    prompt = torch.cat([first.sequences, follow_up], dim=1)
    assert first.cache.get_seq_length() == first.sequences.shape[1] - 1  # the last token is not fed yet
    resumed = ours.generate(input_ids=prompt, cache=first.cache, max_new_tokens=6)
    fresh = ours.generate(input_ids=prompt, pixel_values=inputs["pixel_values"], max_new_tokens=6)
    assert_same_tokens(resumed, fresh)


# ---- model inputs per step ---------------------------------------------------------------------
def test_images_go_to_prefill_only_and_decode_feeds_one_token(llava, processor, images, monkeypatch):
    ours = llava[0]
    inputs = batch_of_three(processor, images)
    seen = []
    forward = ours.forward

    def spy(**kwargs):
        seen.append(kwargs)
        return forward(**kwargs)

    monkeypatch.setattr(ours, "forward", spy)
    ours.generate(**inputs, max_new_tokens=4)
    assert len(seen) == 4
    assert seen[0]["pixel_values"] is not None and seen[0]["input_ids"].shape == inputs["input_ids"].shape
    T = inputs["input_ids"].shape[1]
    for step, kwargs in enumerate(seen[1:], start=1):
        assert kwargs.get("pixel_values") is None and kwargs["input_ids"].shape == (3, 1)
        assert kwargs["attention_mask"].shape == (3, T + step)
        expected = inputs["attention_mask"].sum(-1, keepdim=True) - 1 + step  # (3, 1)
        assert torch.equal(kwargs["position_ids"], expected)
    assert torch.equal(seen[0]["position_ids"][1], torch.clamp(inputs["attention_mask"][1].cumsum(-1) - 1, min=0))


# ---- streaming ---------------------------------------------------------------------------------
def test_streamer_in_a_thread_yields_the_new_text(llava, processor, images):
    ours, theirs = llava
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    tokenizer = processor.tokenizer
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    thread = threading.Thread(target=ours.generate, kwargs=dict(**inputs, streamer=streamer, max_new_tokens=15))
    thread.start()
    pieces = list(streamer)
    thread.join()
    new = ours.generate(**inputs, max_new_tokens=15)[0, inputs["input_ids"].shape[1]:]
    assert "".join(pieces) == tokenizer.decode(new)
    reference = tstreamers.TextIteratorStreamer(tokenizer, skip_prompt=True)
    theirs.generate(**inputs, streamer=reference, max_new_tokens=15)
    assert comparable_stream(pieces) == comparable_stream(list(reference))


def test_streamer_needs_batch_size_one(llava, processor, images):
    with pytest.raises(ValueError, match="batch size 1 only, got a batch of 3"):
        llava[0].generate(**batch_of_three(processor, images), max_new_tokens=2,
                          streamer=TextIteratorStreamer(processor.tokenizer))


def test_streamer_ends_when_generate_fails(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    inputs["input_ids"][0, -1] = 99999  # out of the vocabulary: the model raises
    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, timeout=30)
    with pytest.raises(ValueError):
        llava[0].generate(**inputs, max_new_tokens=2, streamer=streamer)
    assert list(streamer) == [""]  # ended, so a consumer thread does not hang


# ---- errors and warnings -----------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=3, num_return_sequences=4), "num_return_sequences=4 must be <= num_beams=3"),
    (dict(num_return_sequences=2), "num_return_sequences=2 needs sampling"),
    (dict(penalty_alpha=0.6, top_k=4), "contrastive search, which transformers moved out of its core"),
    (dict(dola_layers="high"), "DoLa decoding, which transformers moved out"),
    (dict(num_beams=4, num_beam_groups=2), "group \\(diverse\\) beam search"),
    (dict(num_beams=2, force_words_ids=[[5]]), "constrained beam search"),
    (dict(max_new_token=5), r"neither generation options nor inputs of LlavaForConditionalGeneration.forward: "
                            r"\['max_new_token'\]"),
    (dict(do_sample=True, temperature=0.0), "temperature must be > 0 when do_sample=True"),
    (dict(max_new_tokens=-4), "max_new_tokens must be an integer >= 1, got -4"),
    (dict(return_dict=False), r"generate sets \['return_dict'\] itself"),
])
def test_bad_options_raise_clear_errors(llava, processor, kwargs, message):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    with pytest.raises(ValueError, match=message):
        llava[0].generate(**inputs, **kwargs)


def test_bad_prompt_shapes(llava, processor):
    inputs = processor(text=TEXT_ONLY, return_tensors="pt")
    with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
        llava[0].generate(input_ids=inputs["input_ids"][0], max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        llava[0].generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"][:, 1:],
                          max_new_tokens=2)
    with pytest.raises(ValueError, match="input_ids is empty"):
        llava[0].generate(input_ids=inputs["input_ids"][:, :0], max_new_tokens=2)
    embeds = llava[0].get_input_embeddings()(inputs["input_ids"])
    with pytest.raises(ValueError, match=r"and inputs_embeds \(1, \d+\) must cover the same tokens"):
        llava[0].generate(input_ids=inputs["input_ids"][:, 1:], inputs_embeds=embeds, max_new_tokens=2)


def test_right_padding_warns(llava, processor, caplog):
    processor.tokenizer.padding_side = "right"
    try:
        inputs = processor(text=[TEXT_ONLY, "USER: Hi ASSISTANT:"], padding=True, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "left"
    with caplog.at_level(logging.WARNING, logger="llavakit"):
        llava[0].generate(**inputs, max_new_tokens=2)
    assert "right-padded" in caplog.text


def test_pad_defaults_to_first_eos(llava, processor, images, caplog):
    ours, theirs = llava
    inputs = batch_of_three(processor, images)
    new = greedy_new_tokens(ours, inputs)
    eos = int(new[1, 1])
    saved = ours.generation_config.pad_token_id, theirs.generation_config.pad_token_id
    ours.generation_config.pad_token_id = theirs.generation_config.pad_token_id = None
    try:
        a, b = both(llava, inputs, max_new_tokens=8, eos_token_id=[eos, 2])
        with caplog.at_level(logging.WARNING, logger="llavakit"):
            ours.generate(input_ids=inputs["input_ids"], max_new_tokens=1, eos_token_id=eos)
    finally:
        ours.generation_config.pad_token_id, theirs.generation_config.pad_token_id = saved
    assert_same_tokens(a, b)
    assert (a[1, inputs["input_ids"].shape[1] + 2:] == eos).all()  # finished rows repeat the first EOS
    assert "attention mask and the pad token id were not set" in caplog.text  # batched, no mask, no pad


# ---- the text-only causal LMs --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from tests.assets import TINY_TEXT, perturb_

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_TEXT, pad_token_id=32001)).eval()
    perturb_(model)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return folder


def test_llama_for_causal_lm_generate(tiny_llama_dir, processor):
    models = (LlamaForCausalLM.from_pretrained(tiny_llama_dir),
              transformers.LlamaForCausalLM.from_pretrained(tiny_llama_dir).eval())
    inputs = processor.tokenizer([TEXT_ONLY, "Hello"], padding=True, return_tensors="pt")
    ours, theirs = both(models, inputs, max_new_tokens=10)
    assert_same_tokens(ours, theirs)
    torch.manual_seed(5)
    ours = models[0].generate(**inputs, max_new_tokens=10, do_sample=True, top_p=0.8)
    torch.manual_seed(5)
    assert_same_tokens(ours, models[1].generate(**inputs, max_new_tokens=10, do_sample=True, top_p=0.8))


# ---- KV cache implementations ------------------------------------------------------------------
@pytest.mark.parametrize("which", ["llava", "mistral_llava"])
def test_static_and_dynamic_caches_give_transformers_tokens(which, request, processor, images):
    models = request.getfixturevalue(which)
    inputs = batch_of_three(processor, images)
    theirs = models[1].generate(**inputs, max_new_tokens=9, do_sample=False)
    static = models[0].generate(**inputs, max_new_tokens=9, return_dict_in_generate=True)
    dynamic = models[0].generate(**inputs, max_new_tokens=9, cache_implementation="dynamic",
                                 return_dict_in_generate=True)
    assert_same_tokens(static.sequences, theirs)
    assert_same_tokens(dynamic.sequences, theirs)
    assert isinstance(static.cache, StaticCache) and isinstance(dynamic.cache, DynamicCache)
    T = inputs["input_ids"].shape[1]
    assert static.cache.max_cache_len == T + 9  # prompt + new tokens, allocated once
    for a, b in zip(static.cache.to_legacy_cache(), dynamic.cache.to_legacy_cache()):
        torch.testing.assert_close(a[0], b[0], atol=1e-6, rtol=0)


def test_prefix_reuse_with_the_static_cache(llava, processor, images):
    ours = llava[0]
    ours.prefix_cache.clear()
    inputs = processor(images=images["chelsea"], text=PROMPT, return_tensors="pt")
    first = ours.generate(**inputs, max_new_tokens=4)
    follow = torch.cat([first, processor.tokenizer(" USER: More? ASSISTANT:", add_special_tokens=False,
                                                   return_tensors="pt")["input_ids"]], dim=1)
    hits = ours.prefix_cache.hits
    reused = ours.generate(input_ids=follow, pixel_values=inputs["pixel_values"], max_new_tokens=5)
    assert ours.prefix_cache.hits == hits + 1
    fresh = ours.generate(input_ids=follow, pixel_values=inputs["pixel_values"], max_new_tokens=5,
                          prefix_cache=False, cache_implementation="dynamic")
    assert_same_tokens(reused, fresh)
