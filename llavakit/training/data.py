"""Training data: LLaVA-format and messages-style records -> (input_ids, labels, pixel_values), and batching.

LLaVA-Video records ({"video": "clip.mp4", "conversations": [...]} with `<video>` in the human turn, as in
LLaVA-Video-178K and the OneVision data) give `pixel_values_videos`: each video sampled to a fixed num_frames.

Labels are -100 everywhere except the assistant turns, located with the model's own chat template:
its `{% generation %}` blocks when it has them, otherwise by rendering the chat one turn at a time.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llavakit.processing import chat_template as chat

logger = logging.getLogger("llavakit.training")

IGNORE_INDEX = -100
DEFAULT_NUM_FRAMES = 8
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class SkipSample(ValueError):
    """A sample that cannot be trained on as given (truncation would cut an image, nothing left to learn...)."""


def load_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A JSON list or a JSONL file of records."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    records = json.loads(text)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of samples, got {type(records).__name__}")
    return records


def _resolve(image: Any, image_folder: str | os.PathLike | None) -> Any:
    """A relative image path is looked up in image_folder; PIL images and URLs pass through."""
    if isinstance(image, str) and image_folder is not None and not image.startswith(("http://", "https://")):
        return str(Path(image_folder) / image)
    return image


def llava_to_messages(record: dict[str, Any], image_folder: str | os.PathLike | None = None
                      ) -> tuple[list[dict[str, Any]], list[Any]]:
    """A LLaVA record {"id", "image", "conversations": [{"from", "value"}]} -> (messages, images).

    Each `<image>` in a turn becomes an image part (first in that message); a sample with an image but no
    `<image>` gets it in its first human turn, as LLaVA's preprocessing does. A "video" record's `<video>`
    placeholders become video parts the same way (the video sources come from `record_videos`).
    """
    sample_id = record.get("id", "?")
    if not isinstance(record.get("conversations"), list) or not record["conversations"]:
        raise ValueError(f"sample {sample_id}: 'conversations' must be a non-empty list of {{from, value}} turns")
    images = record.get("image")
    images = [] if images is None else [images] if isinstance(images, str) else list(images)
    images = [_resolve(image, image_folder) for image in images]
    videos = record_videos(record, image_folder)
    placeholders = sum(str(turn.get("value", "")).count("<image>") for turn in record["conversations"])
    video_placeholders = sum(str(turn.get("value", "")).count("<video>") for turn in record["conversations"])
    messages = []
    for i, turn in enumerate(record["conversations"]):
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise ValueError(f"sample {sample_id}: turn {i} has unknown speaker {turn.get('from')!r} "
                             f"(expected one of {sorted(_ROLES)})")
        value = str(turn.get("value", ""))
        n_images, n_videos = value.count("<image>"), value.count("<video>")
        if placeholders == 0 and images and i == 0:
            n_images = len(images)
        if video_placeholders == 0 and videos and i == 0:
            n_videos = len(videos)
        text = value.replace("<image>", "").replace("<video>", "").strip()
        messages.append({"role": role, "content": [{"type": "image"}] * n_images + [{"type": "video"}] * n_videos
                         + [{"type": "text", "text": text}]})
    found = max(placeholders, len(images) if placeholders == 0 else 0)
    if found != len(images):
        raise ValueError(f"sample {sample_id}: {placeholders} <image> placeholder(s) but {len(images)} image(s)")
    if video_placeholders and video_placeholders != len(videos):
        raise ValueError(f"sample {sample_id}: {video_placeholders} <video> placeholder(s) but {len(videos)} "
                         f"video(s)")
    return messages, images


def record_videos(record: dict[str, Any], video_folder: str | os.PathLike | None = None) -> list[Any]:
    """The video sources of a LLaVA-Video record ("video": a path or a list), relative paths under video_folder."""
    videos = record.get("video")
    videos = [] if videos is None else [videos] if isinstance(videos, str) else list(videos)
    return [_resolve(video, video_folder) for video in videos]


def messages_record(record: dict[str, Any], image_folder: str | os.PathLike | None = None
                    ) -> tuple[list[dict[str, Any]], list[Any]]:
    """A messages-style record: {"messages": [...], "images": [...]} or image parts carrying their own
    "image"/"path"/"url" -> (messages with bare image parts, images in order)."""
    own = [_resolve(image, image_folder) for image in record.get("images") or []]
    messages, found = [], []
    for message in record["messages"]:
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = []
        for part in content:
            if part.get("type") == "image":
                source = part.get("image", part.get("path", part.get("url")))
                if source is not None:
                    found.append(_resolve(source, image_folder))
                parts.append({"type": "image"})
            else:
                parts.append(part)
        messages.append({"role": message["role"], "content": parts})
    images = own or found
    n_parts = sum(p.get("type") == "image" for m in messages for p in m["content"])
    if n_parts != len(images):
        raise ValueError(f"sample {record.get('id', '?')}: {n_parts} image part(s) but {len(images)} image(s)")
    return messages, images


def to_messages(record: dict[str, Any], image_folder: str | os.PathLike | None = None
                ) -> tuple[list[dict[str, Any]], list[Any]]:
    if "conversations" in record:
        return llava_to_messages(record, image_folder)
    if "messages" in record:
        return messages_record(record, image_folder)
    raise ValueError(f"sample {record.get('id', '?')}: expected a 'conversations' (LLaVA) or 'messages' list, "
                     f"got keys {sorted(record)}")


def assistant_spans(template: str, messages: list[dict[str, Any]], **template_kwargs: Any
                    ) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, character spans of the assistant turns).

    Uses the template's `{% generation %}` blocks when present. Otherwise each assistant turn is the text
    the template adds between rendering the chat up to that turn (with the generation prompt) and
    rendering it including that turn; a template whose output is not prefix-stable is an error.
    """
    if chat.has_generation_tags(template):
        texts, spans = chat.render(template, [messages], track_generation=True, **template_kwargs)
        return texts[0], spans[0]
    (text,), _ = chat.render(template, [messages], **template_kwargs)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            raise ValueError("a conversation cannot start with an assistant turn")
        (before,), _ = chat.render(template, [messages[:i]], add_generation_prompt=True, **template_kwargs)
        (upto,), _ = chat.render(template, [messages[:i + 1]], **template_kwargs)
        if not upto.startswith(before) or not text.startswith(upto):
            raise ValueError("the chat template does not render conversations prefix-stably, so assistant turns "
                             "cannot be located; use a template with {% generation %} blocks")
        spans.append((len(before), len(upto)))
    return text, spans


def encode_sample(processor: Any, messages: list[dict[str, Any]], images: list[Any], *, template: str,
                  max_length: int | None = None, videos: list[Any] | None = None,
                  num_frames: int = DEFAULT_NUM_FRAMES) -> dict[str, torch.Tensor]:
    """Tokenize one conversation and build its labels: {"input_ids" (T,), "labels" (T,), "pixel_values"?,
    "pixel_values_videos"?}.

    `max_length` counts the expanded image and video tokens. Raises SkipSample when truncation would cut an
    image or a video or leave no assistant token to learn. Videos are sampled to `num_frames` frames.
    """
    tokenizer = processor.tokenizer
    text, spans = assistant_spans(template, messages, **tokenizer.special_tokens_map)
    if not spans:
        raise SkipSample("the conversation has no assistant turn to learn")
    # trim whitespace: tokenizers glue a space to the next word ("▁USER"), which is not the assistant's
    spans = [(a + len(text[a:b]) - len(text[a:b].lstrip()), b - len(text[a:b]) + len(text[a:b].rstrip()))
             for a, b in spans]
    out, shifts = tokenize_chat(processor, text, images, return_offsets_mapping=True, videos=videos,
                                num_frames=num_frames)
    ids = list(out["input_ids"][0])
    # move the spans by the characters each earlier <image> expansion added
    ends, gains = [end for end, _ in shifts[0]], [0] + [gain for _, gain in shifts[0]]
    moved = [tuple(c + gains[bisect.bisect_right(ends, c)] for c in span) for span in spans]
    mask = chat.token_mask_from_spans(out["offset_mapping"][0], moved)
    media_ids = {processor.image_token_id, getattr(processor, "video_token_id", None)} - {None}
    labels = [t if m and t not in media_ids else IGNORE_INDEX for t, m in zip(ids, mask)]
    if max_length is not None and len(ids) > max_length:
        cut = media_ids & set(ids[max_length:])
        if cut:
            kind = "image" if processor.image_token_id in cut else "video"
            raise SkipSample(f"{len(ids)} tokens ({kind} tokens included) > max_length={max_length}, and truncating "
                             f"would cut {kind} tokens")
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        raise SkipSample(f"no assistant token left to learn (max_length={max_length}, {len(ids)} tokens)")
    sample = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    if images:
        # (n_images, 3, S, S); NeXT: (n_images, n_crops, 3, S, S) plus each image's (height, width)
        sample["pixel_values"] = torch.as_tensor(np.stack(out["pixel_values"]))
        if out.get("image_sizes") is not None:
            sample["image_sizes"] = torch.as_tensor(np.asarray(out["image_sizes"])).reshape(-1, 2)  # (n_images, 2)
    if videos:
        sample["pixel_values_videos"] = torch.as_tensor(np.stack(out["pixel_values_videos"]))  # (n_videos, F, 3, S, S)
    return sample


def tokenize_chat(processor: Any, text: str, images: list[Any], videos: list[Any] | None = None,
                  num_frames: int = DEFAULT_NUM_FRAMES, **kwargs: Any) -> tuple[Any, list]:
    """Rendered chat text + its images and videos through the processor, untensored: (outputs, media-expansion
    shifts). Each video is decoded to `num_frames` evenly spaced frames.

    The BOS token is added only when the template did not already write it.
    """
    from llavakit.processing.image import load_image

    pil = [load_image(image) for image in images]
    media = {}
    if videos:
        if getattr(processor, "video_processor", None) is None:
            raise ValueError(f"a sample has a video but {type(processor).__name__} takes none; train a video model "
                             f"(LLaVA-OneVision or LLaVA-NeXT-Video) on video data")
        from llavakit.processing.video import load_video

        media["videos"] = [load_video(video, num_frames=num_frames)[0] for video in videos]  # each (F, H, W, 3)
    bos = processor.tokenizer.bos_token
    add_special = not (bos is not None and text.startswith(bos))
    return processor._process(pil or None, [text], return_tensors=None, add_special_tokens=add_special, **kwargs,
                              **media)


class SupervisedDataset(torch.utils.data.Dataset):
    """Records (LLaVA or messages format) encoded on access; a sample that must be skipped returns None."""

    def __init__(self, records: list[dict[str, Any]], processor: Any, *, image_folder: str | None = None,
                 max_length: int | None = None, chat_template: str | None = None,
                 num_frames: int = DEFAULT_NUM_FRAMES) -> None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.records, self.processor = records, processor
        self.image_folder, self.max_length, self.num_frames = image_folder, max_length, num_frames
        self.template = processor._resolve_template(chat_template)
        self.skipped: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        try:
            return self.encode(self.records[index])
        except SkipSample as err:
            if index not in self.skipped:
                logger.warning(f"skipping sample {self.records[index].get('id', index)}: {err}")
            self.skipped[index] = str(err)
            return None

    def encode(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One record -> tensors (raises SkipSample); subclasses encode other tasks' records."""
        messages, images = to_messages(record, self.image_folder)
        videos = record_videos(record, self.image_folder) if "conversations" in record else []
        return encode_sample(self.processor, messages, images, template=self.template, max_length=self.max_length,
                             videos=videos, num_frames=self.num_frames)

    def modality_lengths(self) -> list[int]:
        """Rough length of each sample (words), positive with an image and negative without (as in LLaVA)."""
        lengths = []
        for record in self.records:
            turns = record.get("conversations") or record.get("messages") or []
            words = sum(len(str(t.get("value", t.get("content", ""))).split()) for t in turns)
            has_image = bool(record.get("image") or record.get("images") or record.get("video")) \
                or "<image>" in json.dumps(turns) or "<video>" in json.dumps(turns) \
                or '"type": "image"' in json.dumps(turns)
            lengths.append(max(words, 1) if has_image else -max(words, 1))
        return lengths


class Collator:
    """Right-pads a list of encoded samples into a batch; drops skipped (None) samples.

    `sequence_labels=True` stacks one label per sample ((B,) or (B, num_labels), for task heads) instead of
    padding per-token labels.
    """

    def __init__(self, pad_token_id: int, sequence_labels: bool = False) -> None:
        self.pad_token_id, self.sequence_labels = pad_token_id, sequence_labels

    def __call__(self, samples: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
        samples = [s for s in samples if s is not None]
        if not samples:
            return {}
        T = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), T), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(samples), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(samples), T), dtype=torch.long)  # (B, T)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[i, :n], attention_mask[i, :n] = s["input_ids"], 1
            if not self.sequence_labels:
                labels[i, :n] = s["labels"]
        if self.sequence_labels:
            labels = torch.stack([s["labels"] for s in samples])  # (B,) or (B, num_labels)
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        pixels = [s["pixel_values"] for s in samples if "pixel_values" in s]
        if pixels:
            batch["pixel_values"] = torch.cat(_pad_crops(pixels))  # (total_images, [max_crops,] 3, S, S)
        sizes = [s["image_sizes"] for s in samples if "image_sizes" in s]
        if sizes:
            batch["image_sizes"] = torch.cat(sizes)  # (total_images, 2): NeXT unpads each image by its size
        videos = [s["pixel_values_videos"] for s in samples if "pixel_values_videos" in s]
        if videos:
            batch["pixel_values_videos"] = torch.cat(videos)  # (total_videos, num_frames, 3, S, S)
        return batch


def _pad_crops(pixels: list[torch.Tensor]) -> list[torch.Tensor]:
    """NeXT samples carry (n_images, n_crops, 3, S, S) with n_crops varying by aspect ratio: zero-pad the crops
    to the batch's largest count (the model reads only each image's own crops, from image_sizes)."""
    if pixels[0].ndim != 5:
        return pixels
    most = max(p.shape[1] for p in pixels)
    return [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixels]


def modality_grouped_batches(lengths: list[int], batch_size: int, generator: random.Random) -> list[list[int]]:
    """Shuffled batches that each hold only image or only text samples, sorted by length inside.

    Each modality is shuffled and cut into batches; the batches are then shuffled together
    (LLaVA's group_by_modality_length, for one process).
    """
    groups = [[i for i, n in enumerate(lengths) if n > 0], [i for i, n in enumerate(lengths) if n < 0]]
    out = []
    for group in groups:
        generator.shuffle(group)
        for start in range(0, len(group), batch_size):
            out.append(sorted(group[start:start + batch_size], key=lambda i: -abs(lengths[i])))
    generator.shuffle(out)
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, lengths: list[int] | None = None
                  ) -> list[list[int]]:
    """Index batches for one epoch, reproducible from (seed, epoch); `lengths` turns on modality grouping."""
    generator = random.Random(seed * 1_000_003 + epoch)
    if lengths is not None:
        return modality_grouped_batches(lengths, batch_size, generator)
    order = list(range(n))
    generator.shuffle(order)
    return [order[start:start + batch_size] for start in range(0, n, batch_size)]
