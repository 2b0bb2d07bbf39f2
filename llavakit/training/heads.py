"""Fine-tuning task heads: labelled records -> batches for ...ForSequenceClassification / ...ForMultipleChoice,
and which head parameters train. The training loop is the generation one: it calls `model(**batch).loss`.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import torch
from torch import nn

from llavakit.models import heads
from llavakit.processing import chat_template as chat
from llavakit.training import freeze
from llavakit.training.data import (Collator, SkipSample, SupervisedDataset, llava_to_messages, to_messages,
                                    tokenize_chat)

TASKS = ("generation", "sequence-classification", "multiple-choice")
# task -> config model_type -> head class
HEAD_CLASSES = {
    "sequence-classification": {"llava": heads.LlavaForSequenceClassification,
                                "llava_next": heads.LlavaNextForSequenceClassification,
                                "vipllava": heads.VipLlavaForSequenceClassification},
    "multiple-choice": heads.MULTIPLE_CHOICE_CLASSES,
}


# ---- models ------------------------------------------------------------------------------------------------
def load_head(path: str, task: str, pad_token_id: int | None = None, **label_kwargs: Any) -> nn.Module:
    """The task's head for the checkpoint's family (float32); the multiple-choice head gets its trained classifier.

    `label_kwargs` are num_labels / id2label / problem_type. A config without a pad token gets `pad_token_id`,
    which the head needs to find each row's last token in a padded batch.
    """
    from llavakit.config import AutoConfig

    model_type = AutoConfig.from_pretrained(path).model_type
    classes = HEAD_CLASSES.get(task)
    if classes is None:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if model_type not in classes:
        raise ValueError(f"task {task} supports model types {sorted(classes)}, not {model_type!r}")
    options = {"use_choice_classifier": True} if task == "multiple-choice" else {}
    model = classes[model_type].from_pretrained(path, dtype="float32", **options, **label_kwargs)
    if heads._pad_token_id(model.config) is None:
        model.config.pad_token_id = pad_token_id
    return model


def _is_head(name: str) -> bool:
    """A parameter of the task head itself (`score`, `classifier`); not the base model, not the unused lm_head."""
    return not name.startswith(("model.", "lm_head."))


def apply_stage(model: nn.Module, stage: str) -> None:
    """`freeze.apply_stage` on the wrapped base model (same parameter names), plus the head, which always trains."""
    freeze.apply_stage(model.model, stage)
    for name, param in model.named_parameters():
        if not name.startswith("model."):
            param.requires_grad_(_is_head(name))


def unfreeze_head(model: nn.Module) -> None:
    """Make the head trainable; also on a peft-wrapped head (names prefixed `base_model.model.`)."""
    from llavakit.training.lora import PREFIX

    for name, param in model.named_parameters():
        name = name[len(PREFIX):] if name.startswith(PREFIX) else name
        param.requires_grad_(param.requires_grad or _is_head(name))


# ---- labels -----------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def infer_problem_type(labels: list[Any], num_labels: int) -> str:
    """As transformers decides from the labels: one label -> regression, ints -> single-label, lists -> multi-label."""
    if num_labels == 1:
        return "regression"
    if all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in labels):
        return "single_label_classification"
    if all(isinstance(x, list) for x in labels):
        return "multi_label_classification"
    kinds = sorted({type(x).__name__ for x in labels})
    raise ValueError(f"cannot tell the problem type from labels of types {kinds} with num_labels={num_labels}: use "
                     f"ints (single-label), lists of {num_labels} numbers (multi-label), or set --problem-type")


def label_tensor(label: Any, problem_type: str, num_labels: int, label2id: dict[str, int] | None = None,
                 sample_id: Any = "?") -> torch.Tensor:
    """One record's label as the head's loss wants it: a long index, a multi-hot float (num_labels,), or floats."""
    where = f"sample {sample_id}: label {label!r}"
    if problem_type == "single_label_classification":
        if isinstance(label, str):
            if not label2id or label not in label2id:
                raise ValueError(f"{where} is not one of the label names {sorted(label2id or {})}")
            label = label2id[label]
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < num_labels:
            raise ValueError(f"{where}: single-label classification needs an int in [0, {num_labels})")
        return torch.tensor(label, dtype=torch.long)
    if problem_type == "multi_label_classification":
        if (not isinstance(label, list) or len(label) != num_labels
                or not all(isinstance(x, (bool, numbers.Real)) and 0 <= x <= 1 for x in label)):
            raise ValueError(f"{where}: multi-label classification needs a list of {num_labels} numbers in [0, 1]")
        return torch.tensor([float(x) for x in label])  # (num_labels,)
    if problem_type == "regression":
        values = label if isinstance(label, list) else [label]
        if len(values) != num_labels or not all(_is_number(x) for x in values):
            raise ValueError(f"{where}: regression needs {'a number' if num_labels == 1 else f'{num_labels} numbers'}")
        return torch.tensor(float(values[0])) if num_labels == 1 else torch.tensor([float(x) for x in values])
    raise ValueError(f"problem_type must be one of {heads.PROBLEM_TYPES}, got {problem_type!r}")


# ---- sequence classification -------------------------------------------------------------------------------
def record_messages(record: dict[str, Any], image_folder: str | None = None) -> tuple[list[dict], list[Any]]:
    """(messages, images) of a labelled record: "conversations" / "messages" as for generation, or one "text"
    user turn (its image first)."""
    if "text" in record and "conversations" not in record and "messages" not in record:
        turn = {"from": "human", "value": str(record["text"])}
        return llava_to_messages({**record, "conversations": [turn]}, image_folder)
    return to_messages(record, image_folder)


def encode_classification(processor: Any, messages: list[dict[str, Any]], images: list[Any], *, template: str,
                          max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The chat rendered whole (with the generation prompt when it ends on a user turn, so the pooled last
    token is the same kind of token in every sample): {"input_ids" (T,), "pixel_values"?}."""
    tokenizer = processor.tokenizer
    (text,), _ = chat.render(template, [messages], add_generation_prompt=messages[-1]["role"] == "user",
                             **tokenizer.special_tokens_map)
    out, _ = tokenize_chat(processor, text, images)
    ids = list(out["input_ids"][0])
    if max_length is not None and len(ids) > max_length:
        if processor.image_token_id in ids[max_length:]:
            raise SkipSample(f"{len(ids)} tokens (image tokens included) > max_length={max_length}, and truncating "
                             f"would cut image tokens")
        ids = ids[:max_length]
    sample = {"input_ids": torch.tensor(ids)}
    if images:
        sample["pixel_values"] = torch.as_tensor(np.stack(out["pixel_values"]))  # (n_images, 3, S, S)
    return sample


class ClassificationDataset(SupervisedDataset):
    """Records with a "label" for a sequence-classification head, checked against (and completing) its config.

    A config without problem_type gets the one the labels imply, so the saved head keeps it.
    """

    def __init__(self, records: list[dict[str, Any]], processor: Any, config: Any, **options: Any) -> None:
        super().__init__(records, processor, **options)
        missing = [r.get("id", i) for i, r in enumerate(records) if "label" not in r]
        if missing:
            raise ValueError(f"{len(missing)} record(s) have no 'label' (first: sample {missing[0]})")
        if config.problem_type is None and records:
            config.problem_type = infer_problem_type([r["label"] for r in records], config.num_labels)
        self.config = config
        for i, record in enumerate(records):  # fail before training, not at step 1000
            self.label(record, i)

    def label(self, record: dict[str, Any], index: Any = "?") -> torch.Tensor:
        return label_tensor(record["label"], self.config.problem_type, self.config.num_labels, self.config.label2id,
                            record.get("id", index))

    def encode(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        messages, images = record_messages(record, self.image_folder)
        sample = encode_classification(self.processor, messages, images, template=self.template,
                                       max_length=self.max_length)
        return {**sample, "labels": self.label(record)}


# ---- multiple choice ---------------------------------------------------------------------------------------
class ChoiceDataset(SupervisedDataset):
    """`llavakit eval-mc` rows ({image, question, options, answer}, normalised by its read_rows) encoded for
    the classifier of ...ForMultipleChoice: input_ids / attention_mask (C, T), labels = the answer's index."""

    def encode(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        from llavakit.processing.image import load_image

        question = {"id": record.get("id"), "image": record.get("image"),
                    "conversations": [{"from": "human", "value": record["question"]}]}
        messages, images = llava_to_messages(question, self.image_folder)
        (prompt,), _ = chat.render(self.template, [messages], add_generation_prompt=True,
                                   **self.processor.tokenizer.special_tokens_map)
        encoded = heads.choice_inputs(self.processor, prompt, record["options"],
                                      [load_image(x) for x in images] or None)
        sample = {"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
                  "labels": torch.tensor(record["answer"], dtype=torch.long)}  # (C, T), (C, T), ()
        if images:
            sample["pixel_values"] = encoded["pixel_values"]  # (1, 3, S, S): one image per question
        return sample


class ChoiceCollator(Collator):
    """Right-pads (C, T) rows into (B, C, T); every question of a batch must have the same number of options."""

    def __call__(self, samples: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        counts = [len(s["input_ids"]) for s in samples]
        if len(set(counts)) > 1:
            raise ValueError(f"a multiple-choice batch needs the same number of options per question, got {counts}; "
                             f"use --batch-size 1 or group questions by option count")
        if len({"pixel_values" in s for s in samples}) > 1:
            raise ValueError("a batch mixes questions with and without images; use --batch-size 1")
        T = max(s["input_ids"].shape[1] for s in samples)
        input_ids = torch.full((len(samples), counts[0], T), self.pad_token_id, dtype=torch.long)  # (B, C, T)
        attention_mask = torch.zeros_like(input_ids)  # (B, C, T)
        for i, s in enumerate(samples):
            n = s["input_ids"].shape[1]
            input_ids[i, :, :n], attention_mask[i, :, :n] = s["input_ids"], s["attention_mask"]
        batch = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "labels": torch.stack([s["labels"] for s in samples])}  # labels (B,)
        if "pixel_values" in samples[0]:
            batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])  # (B, 3, S, S)
        return batch


def dataset_and_collator(task: str, records: list[dict[str, Any]], processor: Any, config: Any, **options: Any
                         ) -> tuple[SupervisedDataset, Collator]:
    """The task's dataset over `records` and its collator (padding with the tokenizer's pad token)."""
    pad = processor.tokenizer.pad_token_id
    if task == "sequence-classification":
        return ClassificationDataset(records, processor, config, **options), Collator(pad, sequence_labels=True)
    if task == "multiple-choice":
        return ChoiceDataset(records, processor, **options), ChoiceCollator(pad)
    raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
