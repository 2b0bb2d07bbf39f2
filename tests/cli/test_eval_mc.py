"""`llavakit eval-mc`: accuracy over real photos, one prediction per row, scores equal to the model's own."""

from __future__ import annotations

import json
import shutil

import PIL.Image
import pytest
import torch

from llavakit import AutoProcessor, LlavaForMultipleChoice
from llavakit.cli.eval_mc import answer_index, read_rows
from llavakit.cli.main import main
from llavakit.models.heads import choice_inputs

ROWS = [  # answers as an index, a letter, an option's text and "(B)"
    {"image": "astronaut.png", "question": "Who is this?", "options": ["an astronaut", "a cat", "a cup"], "answer": 0},
    {"image": "chelsea.png", "question": "What animal is it?", "options": ["dog", "cat"], "answer": "B"},
    {"image": "coffee.png", "question": "What drink is shown?", "options": ["tea", "coffee", "juice", "milk"],
     "answer": "coffee"},
    {"image": "rocket.jpg", "question": "What is this?", "options": ["a rocket", "a horse"], "answer": "(A)"},
    {"image": "camera.png", "question": "Is it in colour?", "options": ["yes", "no"], "answer": "(B)"},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("mc-data")
    (root / "images").mkdir()
    for row in ROWS:
        shutil.copy(photos[row["image"].split(".")[0]], root / "images" / row["image"])
    (root / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    llava_format = [dict(id=f"q{i}", image=row["image"], options=row["options"], answer=row["answer"],
                         conversations=[{"from": "human", "value": "<image>\n" + row["question"]},
                                        {"from": "gpt", "value": str(row["answer"])}])
                    for i, row in enumerate(ROWS)]
    (root / "rows.json").write_text(json.dumps(llava_format))
    return root


@pytest.mark.parametrize("name, model_fixture, batch_size", [("rows.jsonl", "tiny_llava_dir", 2),
                                                             ("rows.json", "tiny_llava_next_dir", 3)])
def test_accuracy_equals_the_written_predictions(request, dataset, capsys, tmp_path, name, model_fixture, batch_size):
    model_dir = request.getfixturevalue(model_fixture)
    output = tmp_path / "predictions.jsonl"
    assert main(["eval-mc", "--model", str(model_dir), "--data", str(dataset / name), "--image-folder",
                 str(dataset / "images"), "--output", str(output), "--batch-size", str(batch_size)]) == 0
    printed = capsys.readouterr().out
    predictions = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(predictions) == len(ROWS)
    assert [p["answer"] for p in predictions] == [0, 1, 1, 0, 1]
    correct = sum(p["prediction"] == p["answer"] for p in predictions)
    assert f"accuracy: {correct / len(ROWS):.4f} ({correct}/{len(ROWS)})" in printed
    for p in predictions:
        assert p["prediction"] == max(range(len(p["scores"])), key=p["scores"].__getitem__)
        assert p["correct"] == (p["prediction"] == p["answer"])


def test_scores_are_the_models_option_log_likelihood(dataset, tiny_llava_dir, photos, tmp_path, capsys):
    """Batched CLI scores equal a one-question ForMultipleChoice forward on the same prompt."""
    output = tmp_path / "p.jsonl"
    assert main(["eval-mc", "--model", str(tiny_llava_dir), "--data", str(dataset / "rows.jsonl"),
                 "--image-folder", str(dataset / "images"), "--output", str(output), "--batch-size", "5"]) == 0
    first = json.loads(output.read_text().splitlines()[0])
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ROWS[0]["question"]}]}],
        add_generation_prompt=True)
    inputs = choice_inputs(processor, prompt, ROWS[0]["options"], PIL.Image.open(photos["astronaut"]).convert("RGB"))
    with torch.no_grad():
        logits = LlavaForMultipleChoice.from_pretrained(tiny_llava_dir)(**inputs).logits[0]
    torch.testing.assert_close(torch.tensor(first["scores"]), logits, atol=1e-4, rtol=1e-5)


def test_answer_forms():
    options = ["B", "yes", "no"]
    assert answer_index(2, options) == 2
    assert answer_index("b", options) == 0  # an option's text wins over the letter
    assert answer_index("(C)", options) == 2
    assert answer_index(" Yes ", options) == 1
    with pytest.raises(ValueError, match="neither an index"):
        answer_index("maybe", options)
    with pytest.raises(ValueError, match="there are 3"):
        answer_index(5, options)


def test_bad_files_are_one_line_errors(tmp_path, tiny_llava_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "x.png", "question": "q", "options": ["only one"], "answer": 0}) + "\n")
    with pytest.raises(ValueError, match="row 0 needs"):
        read_rows(str(bad))
    assert main(["eval-mc", "--model", str(tiny_llava_dir), "--data", str(bad), "--output",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "eval-mc: error: row 0 needs a question, an options list" in capsys.readouterr().err
