"""The results file: whole-line appends, done ids, and a torn last line cut off before resuming."""

from __future__ import annotations

import json

import pytest

from llavakit.batch.output import ResultWriter, done_ids


def _rows(*ids):
    return [{"id": i, "answer": f"answer {i}", "error": None} for i in ids]


def test_writer_appends_whole_lines(tmp_path):
    path = tmp_path / "out" / "results.jsonl"
    with ResultWriter(path) as writer:
        writer.write(_rows("a", "b"))
    with ResultWriter(path) as writer:
        writer.write(_rows("c"))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    assert done_ids(path) == {"a", "b", "c"}


def test_missing_file_has_nothing_done(tmp_path):
    assert done_ids(tmp_path / "none.jsonl") == set()


@pytest.mark.parametrize("cut", [1, 10, -2])
def test_torn_last_line_is_cut_off(tmp_path, cut):
    path = tmp_path / "results.jsonl"
    with ResultWriter(path) as writer:
        writer.write(_rows("a", "b", "c"))
    data = path.read_bytes()
    last_start = data.rindex(b"\n", 0, len(data) - 1) + 1
    path.write_bytes(data[:last_start + cut] if cut > 0 else data[:cut])  # kill mid-line
    assert done_ids(path) == {"a", "b"}
    assert path.read_bytes() == data[:last_start]  # ready for clean appends
    with ResultWriter(path) as writer:
        writer.write(_rows("c"))
    assert path.read_bytes() == data


def test_a_complete_but_broken_last_line_counts_as_torn(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "ans\n')
    assert done_ids(path) == {"a"}
    assert path.read_text() == json.dumps({"id": "a"}) + "\n"


def test_damage_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\nnot json\n" + json.dumps({"id": "c"}) + "\n")
    with pytest.raises(ValueError, match="line 2 is not a result row"):
        done_ids(path)
