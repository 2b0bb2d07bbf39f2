"""The status line of train and batch: a shorter line fully replaces a longer one on a terminal."""

from __future__ import annotations

import io

from llavakit.progress import ProgressLine


class Terminal(io.StringIO):
    """A one-row terminal: '\\r' returns to column 0, later characters overwrite earlier ones."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        rows, row, column = [], [], 0
        for char in self.getvalue():
            if char == "\r":
                column = 0
            elif char == "\n":
                rows.append("".join(row).rstrip())
                row, column = [], 0
            else:
                row[column:column + 1] = [char]
                column += 1
        return rows + ["".join(row).rstrip()]


def test_shorter_line_leaves_no_stale_characters():
    terminal = Terminal()
    line = ProgressLine(terminal)
    line.show("step 9/10 | eta 0:007")
    line.show("step 10/10 | eta 0:00")
    assert terminal.screen() == ["step 10/10 | eta 0:00"]
    line.note("training done")
    assert terminal.screen() == ["step 10/10 | eta 0:00", "training done", ""]


def test_not_a_terminal_gets_one_line_per_update():
    out = io.StringIO()
    line = ProgressLine(out)
    line.show("rows 1/2")
    line.show("rows 2/2")
    line.note("done")
    assert out.getvalue() == "rows 1/2\nrows 2/2\ndone\n"
