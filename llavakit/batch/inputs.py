"""Read batch-job rows from a folder of images, a JSONL / CSV / Parquet table or a LLaVA-format JSON file.

Every row becomes {"id": str, "images": [source, ...], "prompt": str | None}, plus "videos": [source, ...]
when it has a `video` / `videos` column (for video models). Local image and video paths are made absolute
(relative to --image-folder, else to the input file's folder) so any worker can open them; URLs (http, https,
data:) are kept as they are. A row without a prompt gets the job's --prompt.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "images", "image_path", "image_url", "path", "url")  # first one present wins
VIDEO_COLUMNS = ("video", "videos", "video_path", "video_url")  # first one present wins
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi")
PROMPT_COLUMNS = ("prompt", "question")
URL_PREFIXES = ("http://", "https://", "data:")


def read_rows(path: str | os.PathLike, image_folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """All rows of the input, in order; ids are unique (a duplicate would make resuming ambiguous)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"batch input {path} does not exist")
    if path.is_dir():
        rows = _folder_rows(path)
        base = Path(image_folder) if image_folder else path
    else:
        base = Path(image_folder) if image_folder else path.parent
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            records = _jsonl_records(path)
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                records = [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]
        elif suffix == ".parquet":
            records = _parquet_records(path)
        elif suffix == ".json":
            records = _llava_records(path)
        else:
            raise ValueError(f"batch input {path} has an unknown type: expected a folder of images, .jsonl, .csv, "
                             ".parquet or a LLaVA-format .json")
        rows = [_table_row(r, i, path) for i, r in enumerate(records)]
    for row in rows:
        row["images"] = [_resolve(s, base) for s in row["images"]]
        if "videos" in row:
            row["videos"] = [_resolve(s, base) for s in row["videos"]]
    _check_unique(rows, path)
    return rows


def _folder_rows(folder: Path) -> list[dict[str, Any]]:
    """Every image or video file under the folder (sorted), its id the path relative to the folder."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"batch input folder {folder} has no image files ({', '.join(IMAGE_SUFFIXES)}) and no "
                         f"video files ({', '.join(VIDEO_SUFFIXES)})")
    return [{"id": p.relative_to(folder).as_posix(), "prompt": None,
             **({"images": [], "videos": [str(p)]} if p.suffix.lower() in VIDEO_SUFFIXES else {"images": [str(p)]})}
            for p in files]


def _jsonl_records(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number} is not valid JSON: {err}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number} must be a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def _parquet_records(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow (or llavakit[ray])") from None
    return pq.read_table(path).to_pylist()


def _llava_records(path: Path) -> list[dict[str, Any]]:
    """LLaVA training format: [{"id", "image", "conversations": [{"from": "human", "value": ...}, ...]}]."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of LLaVA samples ({{'id', 'image', 'conversations'}})")
    records = []
    for i, sample in enumerate(data):
        if not isinstance(sample, dict) or not isinstance(sample.get("conversations"), list):
            raise ValueError(f"{path} sample {i} has no 'conversations' list")
        human = next((t for t in sample["conversations"] if isinstance(t, dict) and t.get("from") == "human"), None)
        if human is None or not isinstance(human.get("value"), str):
            raise ValueError(f"{path} sample {i} has no human turn with a text 'value'")
        records.append({"id": sample.get("id"), "image": sample.get("image"), "video": sample.get("video"),
                        "prompt": _strip_image_tags(human["value"])})
    return records


def _strip_image_tags(text: str) -> str:
    """The human turn without its <image> / <video> placeholders: the chat template places the media itself."""
    text = text.replace("<image>", "\n").replace("<video>", "\n")
    return "\n".join(line for line in text.split("\n") if line.strip()).strip()


def _table_row(record: dict[str, Any], index: int, source: Path) -> dict[str, Any]:
    images = _sources(record, IMAGE_COLUMNS, index, source)
    videos = _sources(record, VIDEO_COLUMNS, index, source)
    prompt = next((record[c] for c in PROMPT_COLUMNS if record.get(c) is not None), None)
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{source} row {index}: the prompt must be a string, got {type(prompt).__name__}")
    row_id = record.get("id")
    row = {"id": str(row_id) if row_id is not None else str(index), "images": images, "prompt": prompt}
    if videos:
        row["videos"] = videos
    return row


def _sources(record: dict[str, Any], columns: tuple[str, ...], index: int, source: Path) -> list[str]:
    """The path/URL list of the first of `columns` present in the record ([] when none is)."""
    column = next((c for c in columns if record.get(c) is not None), None)
    items = record[column] if column else []
    items = [items] if isinstance(items, str) else items
    if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) for s in items):
        raise ValueError(f"{source} row {index}: the '{column}' column must be a path/URL string or a list of them")
    return list(items)


def _resolve(source: str, base: Path) -> str:
    if source.startswith(URL_PREFIXES):
        return source
    if source.startswith("file://"):
        source = source[len("file://"):]
    return str((base / os.path.expanduser(source)).resolve())


def _check_unique(rows: list[dict[str, Any]], source: Path) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise ValueError(f"{source} has the id {row['id']!r} more than once; ids must be unique so a rerun "
                             "can tell which rows are done")
        seen.add(row["id"])
