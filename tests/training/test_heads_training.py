"""Fine-tuning task heads (llavakit/training/heads.py): labelled records -> batches, training lowers the loss,
and the trained head saves and reloads with the same logits."""

from __future__ import annotations

import shutil

import pytest
import torch

from llavakit import AutoProcessor, LlavaForMultipleChoice, LlavaForSequenceClassification
from llavakit.training import heads
from llavakit.training.data import Collator
from llavakit.training.loop import TrainingArguments, evaluate, train

NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "horse")


@pytest.fixture(scope="module")
def processor(tiny_llava_dir):
    return AutoProcessor.from_pretrained(tiny_llava_dir)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("labelled")
    for name in NAMES:
        shutil.copy(photos[name], folder / f"{name}.png")
    return folder


def records(labels) -> list[dict]:
    """One record per photo, alternating the "text" and LLaVA "conversations" forms."""
    out = []
    for i, (name, label) in enumerate(zip(NAMES, labels)):
        if i % 2:
            out.append({"id": name, "image": f"{name}.png", "text": "What is in this picture?", "label": label})
        else:
            out.append({"id": name, "image": f"{name}.png", "label": label,
                        "conversations": [{"from": "human", "value": "<image>\nWhat is in this picture?"}]})
    return out


def head(tiny_llava_dir, stage="stage1", **labels):
    model = heads.load_head(str(tiny_llava_dir), "sequence-classification", **labels)
    heads.apply_stage(model, stage)
    return model


def same_weights(a, b):
    """Every tensor of the reloaded head equals the trained one bit for bit (logits then agree up to op order)."""
    theirs = b.state_dict()
    assert a.state_dict().keys() == theirs.keys()
    for name, value in a.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def test_training_lowers_the_loss_and_the_head_reloads(tiny_llava_dir, processor, folder, tmp_path):
    model = head(tiny_llava_dir, num_labels=2, id2label={0: "living", 1: "object"})
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"model", "score"}
    assert all(n.startswith(("model.multi_modal_projector.", "score.")) for n, p in model.named_parameters()
               if p.requires_grad)
    dataset, collate = heads.dataset_and_collator("sequence-classification", records([0, 0, 1, 1, 1, 0]),
                                                  processor, model.config, image_folder=str(folder))
    assert model.config.problem_type == "single_label_classification"  # inferred from the int labels
    before = evaluate(model, dataset, collate, batch_size=6)
    history = train(model, TrainingArguments(str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=3,
                                             learning_rate=3e-2, warmup_ratio=0.0, disable_progress=True,
                                             logging_steps=1), dataset, collate, eval_dataset=dataset)
    assert history[-1]["eval_loss"] < before - 0.05, (before, history)

    model.save_pretrained(tmp_path / "head")
    reloaded = LlavaForSequenceClassification.from_pretrained(tmp_path / "head")
    assert reloaded.config.id2label == {0: "living", 1: "object"}
    assert reloaded.config.problem_type == "single_label_classification"
    batch = collate([dataset[i] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        expected, got = model(**batch), reloaded(**batch)
    same_weights(reloaded, model)
    torch.testing.assert_close(got.logits, expected.logits)
    torch.testing.assert_close(got.loss, expected.loss)


@pytest.mark.parametrize("problem, num_labels, labels, dtype, shape", [
    ("single_label_classification", 3, [0, 2, 1, 0, 1, 2], torch.long, (6,)),
    ("multi_label_classification", 3, [[1, 0, 1], [0, 0, 0], [0.5, 1, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]],
     torch.float32, (6, 3)),
    ("regression", 1, [0.5, -1.0, 2.25, 0, 3, 1.5], torch.float32, (6,)),
])
def test_labels_collate_per_problem_type(tiny_llava_dir, processor, folder, problem, num_labels, labels, dtype, shape):
    model = head(tiny_llava_dir, num_labels=num_labels)
    dataset, collate = heads.dataset_and_collator("sequence-classification", records(labels), processor,
                                                  model.config, image_folder=str(folder))
    assert model.config.problem_type == problem  # inferred, as transformers does
    batch = collate([dataset[i] for i in range(6)])
    assert batch["labels"].dtype == dtype and tuple(batch["labels"].shape) == shape
    assert torch.equal(batch["labels"], torch.tensor(labels, dtype=dtype))
    assert batch["pixel_values"].shape == (6, 3, 28, 28) and batch["input_ids"].shape[0] == 6
    assert torch.isfinite(model(**batch).loss)


def test_text_records_match_conversations_and_pool_the_prompt_end(processor, folder, tiny_llava_dir):
    config = head(tiny_llava_dir, num_labels=2).config
    text = {"image": "chelsea.png", "text": "What is this?", "label": 1}
    llava = {"image": "chelsea.png", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}],
             "label": 1}
    dataset = heads.ClassificationDataset([text, llava], processor, config, image_folder=str(folder))
    a, b = dataset[0], dataset[1]
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    # a conversation that ends on a user turn gets the generation prompt: the pooled token ends "ASSISTANT:"
    assert processor.decode(a["input_ids"]).endswith("What is this? ASSISTANT:")
    assert int((a["input_ids"] == processor.image_token_id).sum()) == 16


@pytest.mark.parametrize("label, num_labels, problem, message", [
    (2, 2, None, r"label 2: single-label classification needs an int in \[0, 2\)"),
    (True, 2, "single_label_classification", "needs an int"),
    ("dog", 2, None, "not one of the label names"),
    ([1, 0], 3, None, "needs a list of 3 numbers in"),
    ([1, 0, 2], 3, "multi_label_classification", "numbers in \\[0, 1\\]"),
    ("big", 1, None, "regression needs a number"),
    (0.5, 3, None, "cannot tell the problem type"),
])
def test_bad_labels_are_clear_errors(tiny_llava_dir, processor, label, num_labels, problem, message):
    config = head(tiny_llava_dir, num_labels=num_labels, problem_type=problem).config
    record = {"id": "bad", "text": "hi", "label": label}
    with pytest.raises(ValueError, match=message):
        heads.ClassificationDataset([record], processor, config)
    with pytest.raises(ValueError, match="1 record.*no 'label' .*sample nolabel"):
        heads.ClassificationDataset([{"id": "nolabel", "text": "hi"}], processor, config)


def test_multiple_choice_classifier_trains(tiny_llava_dir, processor, folder, tmp_path):
    from llavakit.cli.eval_mc import _normalise

    rows = [_normalise({"image": f"{name}.png", "question": "What is this?", "options": ["a cat", "a cup", "a rocket"],
                        "answer": answer}, i) for i, (name, answer) in
            enumerate([("chelsea", "a cat"), ("coffee", "B"), ("rocket", 2), ("astronaut", 0)])]
    model = heads.load_head(str(tiny_llava_dir), "multiple-choice")
    heads.apply_stage(model, "stage1")
    assert model.classifier is not None and model.classifier.weight.requires_grad
    assert not model.lm_head.weight.requires_grad
    dataset, collate = heads.dataset_and_collator("multiple-choice", rows, processor, model.config,
                                                  image_folder=str(folder))
    batch = collate([dataset[0], dataset[1]])
    assert batch["input_ids"].shape[:2] == (2, 3) and batch["pixel_values"].shape == (2, 3, 28, 28)
    assert batch["labels"].tolist() == [0, 1]
    before = evaluate(model, dataset, collate, batch_size=4)
    train(model, TrainingArguments(str(tmp_path), max_steps=6, per_device_train_batch_size=2, learning_rate=3e-2,
                                   warmup_ratio=0.0, disable_progress=True), dataset, collate)
    assert evaluate(model, dataset, collate, batch_size=4) < before - 0.05
    model.save_pretrained(tmp_path / "mc")
    reloaded = LlavaForMultipleChoice.from_pretrained(tmp_path / "mc")
    assert reloaded.classifier is not None
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)
    same_weights(reloaded, model)
    uneven = {**rows[0], "options": ["a cat", "a dog"], "answer": 1}
    with pytest.raises(ValueError, match=r"same number of options per question, got \[3, 2\]"):
        collate([dataset[0], heads.ChoiceDataset([uneven], processor, image_folder=str(folder))[0]])


def test_generation_collator_is_unchanged():
    samples = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3])},
               {"input_ids": torch.tensor([1, 5]), "labels": torch.tensor([-100, 5])}]
    batch = Collator(0)(samples)
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
