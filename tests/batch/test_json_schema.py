"""`llavakit batch --json-schema`: extraction from many images into JSON lines that all validate."""

from __future__ import annotations

import json
import shutil

import pytest

from llavakit.batch.runner import BatchEngine
from llavakit.cli.main import main

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["subject", "count", "outdoor", "label"],
          "properties": {"subject": {"enum": ["person", "cat", "cup", "rocket", "horse"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 20},
                         "outdoor": {"type": "boolean"},
                         "label": {"type": "string", "maxLength": 10}}}


def test_cli_writes_one_valid_json_per_image(tiny_llava_dir, photos, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "horse"):
        shutil.copy(photos[name], folder / photos[name].name)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    out = tmp_path / "out.jsonl"
    code = main(["batch", str(tiny_llava_dir), "--input", str(folder), "--output", str(out), "--json-schema",
                 str(tmp_path / "schema.json"), "--max-new-tokens", "60", "--batch-size", "3", "--no-progress",
                 "--prompt", "Describe the image as JSON."])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5
    for row in rows:
        assert row["error"] is None
        jsonschema.validate(row["json"], SCHEMA)
        assert json.loads(row["answer"]) == row["json"]


def test_batched_constrained_equals_one_at_a_time(tiny_llava_dir, photos):
    engine = BatchEngine(str(tiny_llava_dir), max_new_tokens=60, json_schema=SCHEMA)
    rows = [{"id": n, "images": [str(photos[n])], "prompt": p}
            for n, p in (("chelsea", "JSON please"), ("coffee", "Describe the cup as JSON, in detail."))]
    assert engine.run(rows) == [engine.run([row])[0] for row in rows]


def test_cut_answers_are_errors_not_broken_json(tiny_llava_dir, photos):
    engine = BatchEngine(str(tiny_llava_dir), max_new_tokens=4, json_schema=SCHEMA)
    [result] = engine.run([{"id": "a", "images": [str(photos["chelsea"])], "prompt": "x"}])
    assert result["json"] is None and "--max-new-tokens 4" in result["error"]


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"type": "integer", "minimum": 3, "maximum": 1}), "invalid JSON schema"),
])
def test_bad_schema_files_are_one_line_errors(tiny_llava_dir, photos, tmp_path, capsys, text, message):
    (tmp_path / "schema.json").write_text(text)
    code = main(["batch", str(tiny_llava_dir), "--input", str(photos["chelsea"].parent), "--output",
                 str(tmp_path / "o.jsonl"), "--json-schema", str(tmp_path / "schema.json")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.jsonl").exists()
