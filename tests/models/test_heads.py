"""Task heads (llavakit/models/heads.py): parity with transformers' Llama heads on the text-only path, and
shapes, pooling and losses with images for every family (LLaVA-1.5, NeXT, ViP, Interleave)."""

from __future__ import annotations

import logging

import PIL.Image
import pytest
import torch
import torch.nn.functional as F
import transformers

from llavakit import (AutoModelForImageTextToText, LlaVaForMaskedLM, LlavaForConditionalGeneration, LlavaForMultipleChoice,
                      LlavaForQuestionAnswering, LlavaForSequenceClassification, LlavaForTokenClassification,
                      LlavaModel, LlavaNextForMultipleChoice, LlavaNextForQuestionAnswering,
                      LlavaNextForSequenceClassification, LlavaNextForTokenClassification, LlavaNextModel,
                      VipLlavaForMultipleChoice, VipLlavaForQuestionAnswering, VipLlavaForSequenceClassification,
                      VipLlavaForTokenClassification, VipLlavaModel)
from llavakit.models.heads import choice_inputs
from llavakit.processing.auto import AutoProcessor
from tests.models.test_interleave import build_interleave

PAD = 32001
PROMPT = "USER: <image>\nWhat is shown here? ASSISTANT:"
FAMILIES = {  # name -> (fixture, base model, seq cls, token cls, QA, multiple choice)
    "llava": ("tiny_llava_dir", LlavaModel, LlavaForSequenceClassification, LlavaForTokenClassification,
              LlavaForQuestionAnswering, LlavaForMultipleChoice),
    "next": ("tiny_llava_next_dir", LlavaNextModel, LlavaNextForSequenceClassification,
             LlavaNextForTokenClassification, LlavaNextForQuestionAnswering, LlavaNextForMultipleChoice),
    "vip": ("tiny_vipllava_dir", VipLlavaModel, VipLlavaForSequenceClassification, VipLlavaForTokenClassification,
            VipLlavaForQuestionAnswering, VipLlavaForMultipleChoice),
    "interleave": ("interleave_dir", LlavaModel, LlavaForSequenceClassification, LlavaForTokenClassification,
                   LlavaForQuestionAnswering, LlavaForMultipleChoice),
}


@pytest.fixture(scope="module", autouse=True)
def quiet():
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def interleave_dir(tmp_path_factory, tokenizer_dir):
    return build_interleave(tmp_path_factory.mktemp("tiny-interleave"), tokenizer_dir)


@pytest.fixture(scope="module")
def images(photos):
    return {name: PIL.Image.open(photos[name]) for name in ("astronaut", "chelsea", "coffee")}


def family(request, name: str):
    fixture, *classes = FAMILIES[name]
    return request.getfixturevalue(fixture), classes


# ---- text-only parity with transformers' Llama heads ----------------------------------------------------
def text_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows: one left-padded, one right-padded, with `<pad>` = 32001."""
    ids = torch.tensor([[PAD, PAD, 1, 3148, 1001, 29901, 1724, 338],
                        [1, 319, 13563, 1546, 263, 12758, PAD, PAD]])
    return ids, (ids != PAD).long()


def llama_twin(head_cls, ours, **config):
    """A transformers Llama head with our text config; its random weights are copied into `ours`."""
    text = transformers.AutoConfig.for_model(**ours.config.text_config.to_dict()).to_dict()
    text.update(config, pad_token_id=PAD)
    torch.manual_seed(0)
    theirs = head_cls(transformers.LlamaConfig(**text)).eval()
    base = theirs.transformer if hasattr(theirs, "transformer") else theirs.model
    ours.model.language_model.load_state_dict(base.state_dict())
    own_head = ours.qa_outputs if hasattr(ours, "qa_outputs") else ours.score
    own_head.load_state_dict((theirs.qa_outputs if hasattr(theirs, "qa_outputs") else theirs.score).state_dict())
    return theirs


@pytest.mark.parametrize("problem, num_labels, labels", [
    ("regression", 1, torch.tensor([0.5, -1.25])),
    ("single_label_classification", 3, torch.tensor([2, 0])),
    ("multi_label_classification", 3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
])
def test_sequence_classification_matches_transformers(tiny_llava_dir, problem, num_labels, labels):
    ours = LlavaForSequenceClassification.from_pretrained(tiny_llava_dir, num_labels=num_labels)
    theirs = llama_twin(transformers.LlamaForSequenceClassification, ours, num_labels=num_labels)
    ids, mask = text_batch()
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits.shape == (2, num_labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)
    assert ours.config.problem_type == theirs.config.problem_type == problem  # inferred the same way


def test_token_classification_matches_transformers(tiny_llava_dir):
    ours = LlavaForTokenClassification.from_pretrained(tiny_llava_dir, num_labels=5)
    theirs = llama_twin(transformers.LlamaForTokenClassification, ours, num_labels=5)
    ids, mask = text_batch()
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(0))
    labels[ids == PAD] = -100
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, labels=labels)
        got = ours(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.logits.shape == (2, 8, 5)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, atol=1e-5, rtol=1e-5)


def test_question_answering_matches_transformers(tiny_llava_dir):
    ours = LlavaForQuestionAnswering.from_pretrained(tiny_llava_dir)
    theirs = llama_twin(transformers.LlamaForQuestionAnswering, ours)
    ids, mask = text_batch()
    starts, ends = torch.tensor([3, 1]), torch.tensor([5, 99])  # 99: outside the sequence, ignored
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
        got = ours(input_ids=ids, attention_mask=mask, start_positions=starts, end_positions=ends)
    for key in ("start_logits", "end_logits", "loss"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)
    assert got.start_logits.shape == (2, 8)


# ---- with images, every family ----------------------------------------------------------------------------
def image_batch(directory, images):
    processor = AutoProcessor.from_pretrained(directory)
    return processor(images=[images["astronaut"], images["chelsea"]],
                     text=[PROMPT, PROMPT + " A short answer"], padding=True, return_tensors="pt")


@pytest.mark.parametrize("name", FAMILIES)
def test_sequence_classification_with_images(request, name, images):
    directory, (base_cls, seq_cls, *_) = family(request, name)
    inputs = image_batch(directory, images)
    head = seq_cls.from_pretrained(directory, num_labels=3, id2label={0: "no", 1: "maybe", 2: "yes"})
    base = base_cls.from_pretrained(directory)
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        out = head(**inputs, labels=labels)
        hidden = base(**inputs).last_hidden_state  # (B, T, H)
    ids = inputs["input_ids"]
    last = torch.tensor([int((row != PAD).nonzero().max()) for row in ids])
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, hidden[torch.arange(2), last] @ head.score.weight.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert head.config.label2id == {"no": 0, "maybe": 1, "yes": 2}

    swapped = dict(inputs)
    swapped["pixel_values"] = inputs["pixel_values"].flip(0)  # each prompt now sees the other image
    if "image_sizes" in inputs:
        swapped["image_sizes"] = inputs["image_sizes"].flip(0)
    if name != "next" or torch.equal(swapped["image_sizes"], inputs["image_sizes"]):
        with torch.no_grad():
            assert not torch.allclose(head(**swapped).logits, out.logits)


@pytest.mark.parametrize("name", FAMILIES)
def test_token_classification_and_question_answering_with_images(request, name, images):
    directory, (_, _, token_cls, qa_cls, _) = family(request, name)
    inputs = image_batch(directory, images)
    ids = inputs["input_ids"]
    labels = torch.randint(0, 4, ids.shape, generator=torch.Generator().manual_seed(1))
    labels[(ids == PAD) | (ids == 32000)] = -100  # no labels on padding and image positions
    tagger = token_cls.from_pretrained(directory, num_labels=4)
    with torch.no_grad():
        out = tagger(**inputs, labels=labels)
    assert out.logits.shape == (*ids.shape, 4)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.reshape(-1, 4), labels.reshape(-1)))

    reader = qa_cls.from_pretrained(directory)
    starts, ends = torch.tensor([ids.shape[1] - 3, 2]), torch.tensor([ids.shape[1] - 1, 4])
    with torch.no_grad():
        span = reader(**inputs, start_positions=starts, end_positions=ends)
    assert span.start_logits.shape == span.end_logits.shape == ids.shape
    expected = (F.cross_entropy(span.start_logits, starts) + F.cross_entropy(span.end_logits, ends)) / 2
    torch.testing.assert_close(span.loss, expected)


def manual_option_log_likelihood(generator, inputs) -> torch.Tensor:
    """sum over option tokens of log softmax(logits[t - 1])[token t], from the generation model's logits."""
    ids, mask, options = (inputs[k][0] for k in ("input_ids", "attention_mask", "option_mask"))
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "option_mask")}
    scores = []
    for row in range(ids.shape[0]):
        with torch.no_grad():
            logits = generator(input_ids=ids[row:row + 1], attention_mask=mask[row:row + 1], **extra).logits[0]
        log_probs = logits.float().log_softmax(-1)  # (T, V)
        scores.append(sum(log_probs[t - 1, ids[row, t]] for t in range(1, ids.shape[1]) if options[row, t]))
    return torch.stack(scores)


@pytest.mark.parametrize("name", FAMILIES)
def test_multiple_choice_is_the_option_log_likelihood(request, name, images):
    directory, (*_, mc_cls) = family(request, name)
    processor = AutoProcessor.from_pretrained(directory)
    inputs = choice_inputs(processor, PROMPT, ["a cat", "an astronaut in a white suit", "B"], images["astronaut"])
    assert inputs["input_ids"].shape[:2] == (1, 3)
    model = mc_cls.from_pretrained(directory)
    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([1]))
        normalized = model(**inputs, length_normalized=True).logits
    generator = AutoModelForImageTextToText.from_pretrained(directory)  # the family's generation class
    expected = manual_option_log_likelihood(generator, inputs)
    torch.testing.assert_close(out.logits[0], expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(normalized[0], expected / inputs["option_mask"][0].sum(-1), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([1])))


def test_multiple_choice_with_a_trained_classifier(tiny_llava_dir, images, caplog):
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    inputs = choice_inputs(processor, PROMPT, ["yes", "no"], images["chelsea"])
    with caplog.at_level(logging.WARNING, logger="llavakit.loading.load"):
        model = LlavaForMultipleChoice.from_pretrained(tiny_llava_dir, use_choice_classifier=True)
    assert "classifier.weight" in caplog.text and "newly initialized" in caplog.text
    with torch.no_grad():
        out = model(**inputs, labels=torch.tensor([0]))
    assert out.logits.shape == (1, 2) and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="option_mask"):
        LlavaForMultipleChoice.from_pretrained(tiny_llava_dir)(input_ids=inputs["input_ids"])


# ---- save / load -------------------------------------------------------------------------------------------
def test_head_save_and_reload(tiny_llava_dir, images, tmp_path):
    head = LlavaForSequenceClassification.from_pretrained(tiny_llava_dir, num_labels=2, id2label={0: "cat", 1: "dog"},
                                                          problem_type="single_label_classification")
    with torch.no_grad():
        head.score.weight.normal_()
    head.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "score.weight" in keys and "model.language_model.layers.0.mlp.up_proj.weight" in keys
    reloaded = LlavaForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.id2label == {0: "cat", 1: "dog"} and reloaded.config.num_labels == 2
    assert reloaded.config.problem_type == "single_label_classification"
    inputs = image_batch(tiny_llava_dir, images)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, head(**inputs).logits)


def test_plain_checkpoint_gives_a_new_head(tiny_llava_hub_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="llavakit.loading.load"):
        head = LlavaForSequenceClassification.from_pretrained(tiny_llava_hub_dir, num_labels=4)
    assert "newly initialized" in caplog.text and "score.weight" in caplog.text
    assert head.score.weight.shape == (4, 64) and torch.isfinite(head.score.weight).all()
    assert 0 < float(head.score.weight.detach().std()) < 0.1  # normal(0, initializer_range), not left empty
    generator = LlavaForConditionalGeneration.from_pretrained(tiny_llava_hub_dir)
    torch.testing.assert_close(head.model.language_model.layers[1].mlp.down_proj.weight,
                               generator.language_model.model.layers[1].mlp.down_proj.weight)
    torch.testing.assert_close(head.model.multi_modal_projector.linear_1.weight,
                               generator.multi_modal_projector.linear_1.weight)


def test_masked_lm_is_a_clear_error(tiny_llava_dir):
    with pytest.raises(NotImplementedError, match="causal decoder.*LlaVaForCausalLM"):
        LlaVaForMaskedLM.from_pretrained(tiny_llava_dir)
    with pytest.raises(NotImplementedError, match="no masked-LM head"):
        LlaVaForMaskedLM(None)


def test_bad_labels_are_clear_errors(tiny_llava_dir):
    with pytest.raises(ValueError, match="problem_type must be one of"):
        LlavaForSequenceClassification.from_pretrained(tiny_llava_dir, problem_type="ranking")
    head = LlavaForSequenceClassification.from_pretrained(tiny_llava_dir, num_labels=3)
    ids, mask = text_batch()
    with pytest.raises(ValueError, match="one label per row: 2 rows"):
        head(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 2]))
    head.config.pad_token_id = None
    with pytest.raises(ValueError, match="batch sizes > 1"):
        head(input_ids=ids)
