"""Reading rows from every input format: ids, prompts and image paths resolved against the right folder."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from llavakit.batch.inputs import read_rows


@pytest.fixture()
def image_dir(tmp_path, photos):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(photos["chelsea"], folder / "cat.png")
    shutil.copy(photos["rocket"], folder / "sub" / "rocket.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_rows_are_sorted_image_files_with_relative_ids(image_dir):
    rows = read_rows(image_dir)
    assert [r["id"] for r in rows] == ["cat.png", "sub/rocket.jpg"]
    assert rows[1]["images"] == [str(image_dir / "sub" / "rocket.jpg")]
    assert all(r["prompt"] is None for r in rows)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        read_rows(tmp_path)


def test_jsonl_ids_prompts_paths_and_urls(tmp_path, image_dir):
    path = tmp_path / "rows.jsonl"
    lines = [{"id": "a", "image": "imgs/cat.png", "prompt": "What animal?"},
             {"image": "https://example.com/x.png"},
             {"id": 7, "image_path": "imgs/sub/rocket.jpg", "question": "Where?"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    rows = read_rows(path)
    assert rows == [
        {"id": "a", "images": [str(image_dir / "cat.png")], "prompt": "What animal?"},
        {"id": "1", "images": ["https://example.com/x.png"], "prompt": None},
        {"id": "7", "images": [str(image_dir / "sub" / "rocket.jpg")], "prompt": "Where?"},
    ]


def test_image_folder_overrides_the_input_folder(tmp_path, image_dir):
    path = tmp_path / "elsewhere" / "rows.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps({"image": "cat.png"}) + "\n")
    assert read_rows(path, image_folder=image_dir)[0]["images"] == [str(image_dir / "cat.png")]
    assert read_rows(path)[0]["images"] == [str(path.parent / "cat.png")]


def test_csv_empty_cells_mean_missing(tmp_path, image_dir):
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "prompt"])
        writer.writerow(["x1", "imgs/cat.png", ""])
        writer.writerow(["x2", "imgs/sub/rocket.jpg", "Count the rockets."])
    rows = read_rows(path)
    assert [(r["id"], r["prompt"]) for r in rows] == [("x1", None), ("x2", "Count the rockets.")]
    assert rows[0]["images"] == [str(image_dir / "cat.png")]


def test_parquet(tmp_path, image_dir):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"image": ["imgs/cat.png", "imgs/sub/rocket.jpg"], "prompt": ["Animal?", None]}), path)
    rows = read_rows(path)
    assert rows == [{"id": "0", "images": [str(image_dir / "cat.png")], "prompt": "Animal?"},
                    {"id": "1", "images": [str(image_dir / "sub" / "rocket.jpg")], "prompt": None}]


def test_llava_json_uses_the_first_human_turn_without_image_tags(tmp_path, image_dir):
    path = tmp_path / "llava.json"
    path.write_text(json.dumps([
        {"id": "000001", "image": "imgs/cat.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the cat doing?"}, {"from": "gpt", "value": "Sitting."},
            {"from": "human", "value": "Why?"}]},
        {"id": "000002", "conversations": [{"from": "human", "value": "Tell a joke.\n<image>"}]},
    ]))
    rows = read_rows(path)
    assert rows == [{"id": "000001", "images": [str(image_dir / "cat.png")], "prompt": "What is the cat doing?"},
                    {"id": "000002", "images": [], "prompt": "Tell a joke."}]


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown type"):
        read_rows(tmp_path / "rows.txt")
    (tmp_path / "dup.jsonl").write_text('{"id": 1, "image": "a.png"}\n{"id": "1", "image": "b.png"}\n')
    with pytest.raises(ValueError, match="'1' more than once"):
        read_rows(tmp_path / "dup.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"id": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_rows(tmp_path / "broken.jsonl")
    (tmp_path / "llava.json").write_text(json.dumps([{"id": "a", "conversations": [{"from": "gpt", "value": "x"}]}]))
    with pytest.raises(ValueError, match="no human turn"):
        read_rows(tmp_path / "llava.json")
