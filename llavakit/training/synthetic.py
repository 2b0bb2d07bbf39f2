"""The shapes dataset the demo model learns: coloured shapes in a 2x2 grid, with questions about colour,
shape, count and position, plus ViP-style questions about the shape inside a drawn red box.

Scenes are reproducible from a seed; answers are single words or short phrases, so accuracy is exact match.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from llavakit import visual_prompts

SIZE = 56  # image side in pixels: 4 x 4 patches of 14
CELL = SIZE // 2
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 225), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # reading order of the grid cells
COUNTS = ("zero", "one", "two", "three", "four")

# Chat template of the demo model: LLaVA-1.5 style, with the assistant text and its </s> in a generation
# block so that training learns to stop.
DEMO_TEMPLATE = """\
{%- for message in messages -%}
{%- if message['content'] is string -%}{%- set parts = [{'type': 'text', 'text': message['content']}] -%}
{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}
{%- if message['role'] == 'assistant' -%}
{{- 'ASSISTANT: ' -}}
{%- generation -%}
{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] ~ ' ' -}}{%- endfor -%}
{{- eos_token ~ ' ' -}}
{%- endgeneration -%}
{%- else -%}
{{- message['role'] | upper ~ ': ' -}}
{%- for part in parts if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}
{%- for part in parts if part['type'] == 'text' -%}{{- part['text'] ~ ' ' -}}{%- endfor -%}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}
"""


@dataclasses.dataclass
class Item:
    color: str
    shape: str
    cell: int  # index into POSITIONS


@dataclasses.dataclass
class Scene:
    items: list[Item]
    box_cell: int | None  # the cell with a red box drawn around it (ViP questions), or None
    jitter: list[tuple[int, int, int]]  # per item: dx, dy, size


def make_scene(rng: random.Random) -> Scene:
    """1-3 shapes in distinct cells; (color, shape) pairs are unique so every question has one answer."""
    n = rng.randint(1, 3)
    cells = rng.sample(range(4), n)
    pairs = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    items = [Item(color, shape, cell) for (color, shape), cell in zip(pairs, cells)]
    items.sort(key=lambda item: item.cell)
    box = rng.choice(cells) if rng.random() < 0.35 else None
    jitter = [(rng.randint(-2, 2), rng.randint(-2, 2), rng.randint(15, 19)) for _ in items]
    return Scene(items, box, jitter)


# The demo's example image (llavakit/assets/example.png, written by scripts/train_demo.py): a scene from the
# training distribution, with a red box around the blue square for the ViP question.
EXAMPLE = Scene([Item("red", "circle", 0), Item("blue", "square", 1), Item("green", "triangle", 3)], box_cell=1,
                jitter=[(0, 1, 18), (-1, 0, 17), (1, -1, 19)])


def render(scene: Scene) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for item, (dx, dy, size) in zip(scene.items, scene.jitter):
        cx, cy = (item.cell % 2) * CELL + CELL // 2 + dx, (item.cell // 2) * CELL + CELL // 2 + dy
        h = size // 2
        box = (cx - h, cy - h, cx + h, cy + h)
        fill = COLORS[item.color]
        if item.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif item.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    if scene.box_cell is not None:
        x0, y0 = (scene.box_cell % 2) * CELL, (scene.box_cell // 2) * CELL
        image = visual_prompts.rectangle(image, (x0 + 1, y0 + 1, x0 + CELL - 2, y0 + CELL - 2), color="red", width=2)
    return image


def describe(scene: Scene) -> str:
    return " , ".join(f"{i.color} {i.shape} at the {POSITIONS[i.cell]}" for i in scene.items)


def questions(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) this scene supports.

    Positions are asked from position to content ("What shape is at the top left?") and given in the
    description. The reverse ("Where is the red circle?") is left out: it needs the decoder to match words
    against visual features inside attention, and the demo-sized model stays at chance on it within the
    recipe's 30-minute CPU budget (tried: 4,000 steps on it alone, other learning rates, tied embeddings,
    the question before the image).
    """
    out = [("What is in the image?", describe(scene)),
           ("How many shapes are there?", COUNTS[len(scene.items)])]
    shapes = [i.shape for i in scene.items]
    for item in scene.items:
        position = POSITIONS[item.cell]
        out.append((f"What shape is at the {position}?", item.shape))
        out.append((f"What color is the shape at the {position}?", item.color))
        if shapes.count(item.shape) == 1:
            out.append((f"What color is the {item.shape}?", item.color))
        if scene.box_cell == item.cell:
            out.append(("What shape is inside the red box?", item.shape))
            out.append(("What color is the shape inside the red box?", item.color))
    return out


def sample_questions(scene: Scene, rng: random.Random, k: int) -> list[tuple[str, str]]:
    """k distinct questions; one of the two ViP questions is always among them when the scene has a box."""
    pool = questions(scene)
    vip = [q for q in pool if "red box" in q[0]]
    rest = [q for q in pool if q not in vip]
    chosen = rng.sample(vip, min(1, len(vip))) + rng.sample(rest, min(k, len(rest)))
    rng.shuffle(chosen)
    return chosen[:k]


def write_dataset(folder: str | os.PathLike, n: int, seed: int, turns: int = 3, prefix: str = "img") -> Path:
    """Write n images and a LLaVA-format JSON (multi-turn) into folder; returns the JSON path."""
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        scene = make_scene(rng)
        name = f"{prefix}{i:06d}.png"
        render(scene).save(folder / "images" / name)
        conversations = []
        for j, (question, answer) in enumerate(sample_questions(scene, rng, turns)):
            conversations.append({"from": "human", "value": ("<image>\n" if j == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        records.append({"id": f"{prefix}{i}", "image": name, "conversations": conversations})
    path = folder / f"{prefix}.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def vocabulary_texts() -> list[str]:
    """Text covering every word the data uses (for training the tokenizer)."""
    rng = random.Random(0)
    texts = ["USER: ASSISTANT:"]
    for _ in range(2000):
        texts.extend(f"{q} {a}" for q, a in questions(make_scene(rng)))
    return texts


def accuracy(model: Any, processor: Any, n: int = 200, seed: int = 12345) -> tuple[float, list[tuple[str, str, str]]]:
    """Exact-match accuracy of greedy answers on n fresh (scene, question) pairs; also returns the misses."""
    import torch

    rng = random.Random(seed)
    hits, misses = 0, []
    for _ in range(n):
        scene = make_scene(rng)
        question, answer = rng.choice(questions(scene))
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = processor(images=render(scene), text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        said = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        if said == answer.lower():
            hits += 1
        else:
            misses.append((question, answer, said))
    return hits / n, misses
