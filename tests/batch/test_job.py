"""A whole job: every row written once, a killed run resumes without duplicates or losses."""

from __future__ import annotations

import json
import shutil

import pytest

from llavakit.batch.job import run_job


@pytest.fixture()
def jsonl_input(tmp_path, photos):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "horse"):
        shutil.copy(photos[name], folder / photos[name].name)
    lines = [{"id": f"q{i}", "image": name, "prompt": f"Question {i}?" if i % 2 else None}
             for i, name in enumerate(["astronaut.png", "chelsea.png", "missing.png", "coffee.png", "rocket.jpg",
                                       "horse.png"])]
    path = folder / "rows.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _ids(path):
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_resume_after_a_kill_writes_each_row_exactly_once(tiny_llava_dir, jsonl_input, tmp_path):
    reference = tmp_path / "reference.jsonl"
    summary = run_job(str(tiny_llava_dir), str(jsonl_input), str(reference), max_new_tokens=4, batch_size=4,
                      progress=False)
    assert (summary.total, summary.skipped, summary.written, summary.errors) == (6, 0, 6, 1)
    assert _ids(reference) == ["q0", "q1", "q2", "q3", "q4", "q5"]
    assert "does not exist" in json.loads(reference.read_text().splitlines()[2])["error"]

    killed = tmp_path / "killed.jsonl"
    data = reference.read_bytes()
    cut = data.index(b"\n", data.index(b'"q3"')) - 15
    killed.write_bytes(data[:cut])  # rows q0..q2 complete, q3 torn mid-line
    summary = run_job(str(tiny_llava_dir), str(jsonl_input), str(killed), max_new_tokens=4, batch_size=4,
                      progress=False)
    assert (summary.skipped, summary.written) == (3, 3)
    assert killed.read_bytes() == data  # batching differs from the first run, greedy answers do not

    summary = run_job(str(tiny_llava_dir), str(jsonl_input), str(killed), max_new_tokens=4, progress=False)
    assert (summary.skipped, summary.written) == (6, 0) and killed.read_bytes() == data


def test_progress_line_on_stderr(tiny_llava_dir, jsonl_input, tmp_path, capsys):
    run_job(str(tiny_llava_dir), str(jsonl_input), str(tmp_path / "out.jsonl"), max_new_tokens=2, batch_size=3)
    err = capsys.readouterr().err
    assert "rows 3/6 |" in err and "rows 6/6 |" in err and "rows/s" in err and "eta " in err
    assert "done: 6 rows written" in err and "(1 with errors, 0 skipped)" in err


def test_bad_options_are_refused(tiny_llava_dir, jsonl_input):
    with pytest.raises(ValueError, match="--batch-size must be >= 1"):
        run_job(str(tiny_llava_dir), str(jsonl_input), "x.jsonl", batch_size=0)
    with pytest.raises(ValueError, match="must not be the input"):
        run_job(str(tiny_llava_dir), str(jsonl_input), str(jsonl_input))
