"""`llavakit batch`: a folder and a LLaVA JSON answered end to end, --ray's address forms, Ray never
imported for a local run, and bad input as a one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from llavakit.cli.main import build_parser, main


@pytest.fixture()
def image_folder(tmp_path, photos):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chelsea", "rocket"):
        shutil.copy(photos[name], folder / photos[name].name)
    (folder / "broken.png").write_bytes(b"not really a png")
    return folder


def test_folder_input_one_line_per_image(tiny_llava_dir, image_folder, tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    args = ["batch", str(tiny_llava_dir), "--input", str(image_folder), "--output", str(out), "--prompt",
            "Describe it.", "--max-new-tokens", "3", "--batch-size", "2"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["broken.png", "chelsea.png", "rocket.jpg"]
    assert "cannot decode" in rows[0]["error"] and rows[0]["answer"] is None
    for row in rows[1:]:
        assert row["error"] is None and row["prompt"] == "Describe it." and row["completion_tokens"] == 3
        assert row["prompt_tokens"] > 16 and row["answer"]
    assert "rows 3/3" in capsys.readouterr().err
    assert main(args) == 0  # a rerun finds everything done
    assert "resuming: 3 of 3 rows" in capsys.readouterr().err and len(out.read_text().splitlines()) == 3


def test_llava_json_with_image_folder(tiny_llava_dir, image_folder, tmp_path):
    source = tmp_path / "llava.json"
    source.write_text(json.dumps([{"id": "s1", "image": "chelsea.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat animal is this?"}, {"from": "gpt", "value": "A cat."}]}]))
    out = tmp_path / "results.jsonl"
    assert main(["batch", str(tiny_llava_dir), "--input", str(source), "--image-folder", str(image_folder),
                 "--output", str(out), "--max-new-tokens", "2", "--no-progress"]) == 0
    row = json.loads(out.read_text())
    assert (row["id"], row["prompt"], row["error"]) == ("s1", "What animal is this?", None)
    assert row["images"] == [str(image_folder / "chelsea.png")]


def test_every_row_failing_exits_nonzero(tiny_llava_dir, tmp_path):
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"image": "gone.png"}) + "\n")
    assert main(["batch", str(tiny_llava_dir), "--input", str(source), "--output", str(tmp_path / "o.jsonl"),
                 "--no-progress"]) == 1


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["batch", "model", "--input", str(tmp_path / "none.csv"), "--output", "o.jsonl"]) == 2
    expected = f"llavakit batch: error: batch input {tmp_path / 'none.csv'} does not exist"
    assert capsys.readouterr().err.strip() == expected


@pytest.mark.parametrize("flag, address", [([], None), (["--ray"], ""), (["--ray", "local"], "local"),
                                           (["--ray=ray://head:10001"], "ray://head:10001")])
def test_ray_address_forms(flag, address):
    args = build_parser().parse_args(["batch", "m", "--input", "i", "--output", "o"] + flag)
    assert args.ray == address


def test_local_run_never_imports_ray(tiny_llava_dir, image_folder, tmp_path):
    code = ("import sys; from llavakit.cli.main import main; "
            f"rc = main(['batch', {str(tiny_llava_dir)!r}, '--input', {str(image_folder)!r}, '--output', "
            f"{str(tmp_path / 'o.jsonl')!r}, '--max-new-tokens', '1', '--no-progress']); "
            "assert rc == 0 and 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
