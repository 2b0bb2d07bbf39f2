"""A status line for long jobs (train, batch): rewritten in place on a terminal, one line per update in logs."""

from __future__ import annotations

import shutil
import sys
from typing import TextIO


class ProgressLine:
    """A status line rewritten in place on a terminal (padded so a shorter line leaves no stale characters);
    one line per update elsewhere (logs, pipes)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.tty = self.out.isatty()
        self.width = 0  # characters of the line now on screen

    def show(self, line: str) -> None:
        if not self.tty:
            print(line, file=self.out, flush=True)
            return
        columns = shutil.get_terminal_size((100, 20)).columns - 1
        line = line[:columns]
        print("\r" + line.ljust(self.width), end="", file=self.out, flush=True)
        self.width = len(line)

    def note(self, text: str) -> None:
        """A line of its own below the status line."""
        print(("\n" if self.tty and self.width else "") + text, file=self.out, flush=True)
        self.width = 0
