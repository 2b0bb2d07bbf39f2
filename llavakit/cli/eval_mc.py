"""`llavakit eval-mc`: multiple-choice evaluation (ScienceQA / MMBench style) by option log-likelihood.

Each row is {image, question, options, answer}; the model scores every option as the continuation of the
chat-formatted question and picks the likeliest. Rows come from a JSON list (LLaVA-format files: `question`
may instead be the first human turn of `conversations`, `answer` the first gpt turn) or a JSONL file.
"""

from __future__ import annotations

import argparse
import json
import os
import string
import sys
from typing import Any

from llavakit.cli.common import add_model_argument, model_path, read_template


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-mc", help="multiple-choice accuracy of a model on a JSON / JSONL file",
                       description="Score each option by the model's log-likelihood, print accuracy, write predictions.")
    add_model_argument(p)
    p.add_argument("--data", required=True, help="JSON list or JSONL of {image, question, options, answer} rows")
    p.add_argument("--image-folder", default=".", help="folder that row images are relative to")
    p.add_argument("--output", required=True,
                   help="JSONL file for the per-row predictions (a row that fails gets an 'error' line instead)")
    p.add_argument("--chat-template", default=None,
                   help="a built-in template name or a .jinja file (default: the checkpoint's own)")
    p.add_argument("--batch-size", type=int, default=4, help="questions per forward pass")
    p.add_argument("--length-normalized", action="store_true", help="mean log-probability per option token")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.set_defaults(run=run)


def read_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a JSON list or a JSONL file, each normalised to {image, question, options, answer, id}."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        raw = json.loads(text)
        if not isinstance(raw, list):
            raise ValueError(f"{path} must hold a JSON list of rows, got {type(raw).__name__}")
    return [_normalise(row, i) for i, row in enumerate(raw)]


def _normalise(row: Any, index: int) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"row {index} is a {type(row).__name__}, expected an object")
    turns = row.get("conversations") or []
    question = row.get("question") or next((t["value"] for t in turns if t.get("from") == "human"), None)
    answer = row.get("answer", next((t["value"] for t in turns if t.get("from") == "gpt"), None))
    options = row.get("options")
    if not question or not isinstance(options, list) or len(options) < 2 or answer is None:
        raise ValueError(f"row {index} needs a question, an options list (2 or more) and an answer; got keys "
                         f"{sorted(row)}")
    question = question.replace("<image>", "").strip()
    options = [str(o) for o in options]
    return dict(id=row.get("id", index), image=row.get("image"), question=question, options=options,
                answer=answer_index(answer, options, index))


def answer_index(answer: Any, options: list[str], row: int = 0) -> int:
    """An answer given as an index, an option's text, or a letter (A, b, "(C)") -> the option's index."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        index = answer
    else:
        text = str(answer).strip()
        lowered = [o.strip().lower() for o in options]
        letter = text.strip("().").upper()
        if text.lower() in lowered:
            index = lowered.index(text.lower())
        elif len(letter) == 1 and letter in string.ascii_uppercase:
            index = string.ascii_uppercase.index(letter)
        else:
            raise ValueError(f"row {row}: answer {answer!r} is neither an index, a letter nor one of the options "
                             f"{options}")
    if not 0 <= index < len(options):
        raise ValueError(f"row {row}: answer {answer!r} points at option {index}, but there are {len(options)}")
    return index


def _pad_rows(tensors: list, value: int) -> Any:
    """Concatenate (C_i, T_i) row blocks into one right-padded (sum C_i, max T_i) tensor."""
    import torch

    length = max(t.shape[1] for t in tensors)
    return torch.cat([torch.nn.functional.pad(t, (0, length - t.shape[1]), value=value) for t in tensors])


def _stack_pixels(blocks: list) -> Any:
    """Concatenate per-row pixel_values; NeXT's (n, crops, 3, S, S) blocks are zero-padded to the same crops."""
    import torch

    if blocks[0].ndim == 5:
        crops = max(b.shape[1] for b in blocks)
        blocks = [torch.nn.functional.pad(b, (0, 0, 0, 0, 0, 0, 0, crops - b.shape[1])) for b in blocks]
    return torch.cat(blocks)


def score_batch(model: Any, processor: Any, rows: list[dict[str, Any]], images: list[Any], template: str | None,
                length_normalized: bool) -> list[list[float]]:
    """Each row's option scores, all rows' options in one forward pass."""
    import torch

    from llavakit.models.heads import choice_inputs

    encoded = []
    for row, image in zip(rows, images):
        content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": row["question"]}]
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               chat_template=template)
        encoded.append(choice_inputs(processor, prompt, row["options"], image))
    counts = [len(row["options"]) for row in rows]
    pad = processor.tokenizer.pad_token_id or 0
    batch = {"input_ids": _pad_rows([e["input_ids"][0] for e in encoded], pad),
             "attention_mask": _pad_rows([e["attention_mask"][0] for e in encoded], 0),
             "option_mask": _pad_rows([e["option_mask"][0] for e in encoded], 0)}
    if any(image is not None for image in images):
        if not all(image is not None for image in images):
            raise ValueError("a batch mixes rows with and without images; use --batch-size 1")
        batch["pixel_values"] = _stack_pixels([e["pixel_values"].repeat_interleave(n, 0)
                                               for e, n in zip(encoded, counts)])
        if "image_sizes" in encoded[0]:
            batch["image_sizes"] = torch.cat([e["image_sizes"].repeat_interleave(n, 0) for e, n in zip(encoded, counts)])
    batch = {k: v.to(model.device) for k, v in batch.items()}
    if "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].to(model.dtype)
    with torch.no_grad():
        scores = model.option_log_likelihood(batch.pop("input_ids"), batch.pop("option_mask"),
                                             length_normalized=length_normalized, **batch)
    return [s.tolist() for s in scores.float().cpu().split(counts)]


def run(args: argparse.Namespace) -> int:
    import torch

    from llavakit.config import AutoConfig
    from llavakit.models.heads import MULTIPLE_CHOICE_CLASSES
    from llavakit.processing.auto import AutoProcessor
    from llavakit.processing.image import load_image

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    rows = read_rows(args.data)
    if not rows:
        raise ValueError(f"{args.data} holds no rows")
    template = read_template(args.chat_template)
    path = model_path(args)
    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in MULTIPLE_CHOICE_CLASSES:
        raise ValueError(f"eval-mc supports model types {sorted(MULTIPLE_CHOICE_CLASSES)}, not {model_type!r}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MULTIPLE_CHOICE_CLASSES[model_type].from_pretrained(path, dtype=args.dtype, device_map=device)
    processor = AutoProcessor.from_pretrained(path)

    def image_of(row: dict[str, Any]) -> Any:
        return None if row["image"] is None else load_image(os.path.join(args.image_folder, row["image"]))

    def score(chunk: list[dict[str, Any]], images: list[Any]) -> list[list[float]]:
        return score_batch(model, processor, chunk, images, template, args.length_normalized)

    correct = scored = failed = 0
    with open(args.output, "w", encoding="utf-8") as out:
        for start in range(0, len(rows), args.batch_size):
            for row, result in _score_rows(rows[start:start + args.batch_size], image_of, score):
                if isinstance(result, str):  # this row failed: record why and go on, as batch does
                    failed += 1
                    print(f"llavakit eval-mc: row {row['id']}: {result}", file=sys.stderr)
                    out.write(json.dumps(dict(id=row["id"], question=row["question"], error=result)) + "\n")
                    continue
                prediction = max(range(len(result)), key=result.__getitem__)
                scored += 1
                correct += prediction == row["answer"]
                out.write(json.dumps(dict(id=row["id"], question=row["question"], options=row["options"],
                                          answer=row["answer"], prediction=prediction,
                                          prediction_text=row["options"][prediction],
                                          correct=prediction == row["answer"], scores=result)) + "\n")
    if scored:
        print(f"accuracy: {correct / scored:.4f} ({correct}/{scored})")
    if failed:
        print(f"llavakit eval-mc: {failed} of {len(rows)} rows failed and are not in the accuracy (their 'error' "
              f"is in {args.output})", file=sys.stderr)
    return 0 if scored else 1


def _score_rows(chunk: list[dict[str, Any]], image_of: Any, score: Any) -> list[tuple[dict[str, Any], Any]]:
    """(row, option scores) for each row of a chunk, or (row, error message) for a row that cannot be scored.
    Rows whose image loads are scored together; if that fails, one by one, so one bad row spoils only itself."""
    results: dict[int, Any] = {}
    good: list[int] = []
    images: dict[int, Any] = {}
    for i, row in enumerate(chunk):
        try:
            images[i] = image_of(row)
            good.append(i)
        except (ValueError, OSError) as err:
            results[i] = str(err)
    groups = [good] if good else []
    while groups:
        group = groups.pop()
        try:
            for i, scores in zip(group, score([chunk[i] for i in group], [images[i] for i in group])):
                results[i] = scores
        except (ValueError, RuntimeError) as err:
            if len(group) == 1:
                results[group[0]] = str(err)
            else:
                groups.extend([i] for i in group)
    return [(row, results[i]) for i, row in enumerate(chunk)]
