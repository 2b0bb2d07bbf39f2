"""The results file: one JSON line per row, appended whole and synced, so a killed run resumes cleanly.

On start, `open_results` reads the ids already done and cuts off a torn last line (a kill mid-write),
so the rerun neither duplicates nor loses a row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def done_ids(path: str | os.PathLike) -> set[str]:
    """Ids of the complete rows in `path`, after cutting a torn last line off the file (if any)."""
    path = Path(path)
    if not path.exists():
        return set()
    data = path.read_bytes()
    ids: set[str] = set()
    good = 0  # bytes of complete, parseable lines
    for number, line in enumerate(data.split(b"\n")[:-1], 1):  # the piece after the last newline is torn
        try:
            record = json.loads(line)
            ids.add(str(record["id"]))
        except (ValueError, KeyError, TypeError):
            if good + len(line) + 1 == len(data):  # the last line is complete but cut mid-record: torn too
                break
            raise ValueError(f"{path} line {number} is not a result row ({line[:60]!r}); it was not written by "
                             "llavakit batch, or the file is damaged: fix or remove it") from None
        good += len(line) + 1
    if good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
            os.fsync(f.fileno())
    return ids


class ResultWriter:
    """Appends rows as whole lines with one write each, and syncs them to disk after every batch."""

    def __init__(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
            written = os.write(self.fd, line)
            if written != len(line):  # a short write (disk full): stop instead of leaving half a line
                raise OSError(f"wrote {written} of {len(line)} bytes of a result line; is the disk full?")
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
