"""The synthetic shapes data and, once shipped, the trained demo model's accuracy on fresh samples."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from llavakit import demo
from llavakit.training import synthetic


def test_scenes_and_questions_are_consistent():
    rng = random.Random(0)
    for _ in range(50):
        scene = synthetic.make_scene(rng)
        assert 1 <= len(scene.items) <= 3 and len({i.cell for i in scene.items}) == len(scene.items)
        qa = dict(synthetic.questions(scene))
        assert qa["How many shapes are there?"] == synthetic.COUNTS[len(scene.items)]
        for item in scene.items:
            position = synthetic.POSITIONS[item.cell]
            assert qa[f"What shape is at the {position}?"] == item.shape
            assert qa[f"What color is the shape at the {position}?"] == item.color
        assert ("What shape is inside the red box?" in qa) == (scene.box_cell is not None)


def test_render_puts_colours_in_their_cells_and_draws_the_box():
    scene = synthetic.Scene([synthetic.Item("blue", "square", 3)], box_cell=0, jitter=[(0, 0, 16)])
    pixels = np.asarray(synthetic.render(scene)).astype(int)  # (56, 56, 3)
    assert tuple(pixels[42, 42]) == synthetic.COLORS["blue"]
    assert pixels[1, 10, 0] > 200 and pixels[1, 10, 1] < 60  # red box edge in the top-left cell
    assert tuple(pixels[14, 14]) == (255, 255, 255)


def test_example_scene_is_from_the_training_distribution():
    """The shipped example (llavakit/assets/example.png) obeys make_scene's rules, box included."""
    scene = synthetic.EXAMPLE
    assert 1 <= len(scene.items) <= 3 and [i.cell for i in scene.items] == sorted({i.cell for i in scene.items})
    assert len({(i.color, i.shape) for i in scene.items}) == len(scene.items)
    assert all(-2 <= dx <= 2 and -2 <= dy <= 2 and 15 <= size <= 19 for dx, dy, size in scene.jitter)
    assert scene.box_cell in {i.cell for i in scene.items}
    assert dict(synthetic.questions(scene))["What shape is inside the red box?"] == "square"


def test_write_dataset_is_llava_format(tmp_path):
    path = synthetic.write_dataset(tmp_path, 4, seed=1, turns=3, prefix="t")
    records = json.loads(path.read_text())
    assert len(records) == 4 and (tmp_path / "images" / records[0]["image"]).exists()
    turns = records[0]["conversations"]
    assert turns[0]["value"].startswith("<image>\n") and [t["from"] for t in turns[:2]] == ["human", "gpt"]
    assert synthetic.write_dataset(tmp_path / "again", 4, seed=1, prefix="t").read_text() == path.read_text()


@pytest.mark.skipif(not demo.has_trained_model(), reason="the trained demo model is not shipped yet")
def test_shipped_demo_model_is_accurate():
    from llavakit import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(demo.TRAINED_DIR).eval()
    processor = AutoProcessor.from_pretrained(demo.TRAINED_DIR)
    accuracy, misses = synthetic.accuracy(model, processor, n=200, seed=2024)
    assert accuracy >= 0.95, misses[:10]
