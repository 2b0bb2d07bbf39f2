"""`llavakit convert`: original LLaVA / ViP-LLaVA / LLaVA-NeXT folders -> llava-hf folders that transformers loads."""

from __future__ import annotations

import json
import shutil

import PIL.Image
import pytest
import torch
import transformers
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from llavakit import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from llavakit.cli.main import main
from llavakit.processing.templates import TEMPLATES
from tests import assets
from tests.loading.test_original import (IMAGE, PAD, assert_same_logits, inputs, tiny_reference, write_original,
                                         write_tower)
from tests.loading.test_original_next import (assert_same_next_logits, next_inputs, tiny_next_reference,
                                              write_next_original)
from tests.reference import hf_processor


@pytest.fixture(scope="module")
def original_tokenizer(tmp_path_factory, tokenizer_dir):
    """The Mistral tokenizer as an original LLaVA repo has it: 32000 tokens, no <image>, no <pad>."""
    out = tmp_path_factory.mktemp("original-tokenizer")
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < 32000]
    (out / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    config["added_tokens_decoder"] = {k: v for k, v in config.get("added_tokens_decoder", {}).items() if int(k) < 32000}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory, original_tokenizer):
    reference = tiny_reference("llava", seed=5)
    root = tmp_path_factory.mktemp("convert")
    src = write_original(root / "llava-v1.5-original", reference, with_tower=False)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(original_tokenizer / name, src / name)
    tower = write_tower(root / "tower", reference)
    dst = root / "llava-hf"
    assert main(["convert", str(src), str(dst), "--vision-tower", str(tower)]) == 0
    return reference, dst


def test_transformers_loads_the_converted_model(converted):
    reference, dst = converted
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(dst).eval()
    assert_same_logits(reference, hf)
    ids, pixels = inputs()
    expected = reference.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
    assert hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False).tolist() == \
        expected.tolist()
    ours = LlavaForConditionalGeneration.from_pretrained(dst)
    assert ours.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False).tolist() == \
        expected.tolist()


def test_converted_processor(converted, photos):
    _, dst = converted
    hf = hf_processor(dst)
    ours = AutoProcessor.from_pretrained(dst)
    assert hf.tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [IMAGE, PAD]
    assert ours.tokenizer.pad_token == "<pad>" and ours.tokenizer.padding_side == "left"
    assert hf.image_processor.do_pad and ours.image_processor.do_pad  # LLaVA-1.5 pads to a square
    assert hf.chat_template == TEMPLATES["llava"]
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
    prompt = ours.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == hf.apply_chat_template(conversation, add_generation_prompt=True) == \
        "USER: <image>\nWhat is this? ASSISTANT:"
    image = PIL.Image.open(photos["rocket"])  # not square
    expected = hf(images=image, text=prompt, return_tensors="pt")
    got = ours(images=image, text=prompt, return_tensors="pt")
    assert got["input_ids"].tolist() == expected["input_ids"].tolist()
    torch.testing.assert_close(got["pixel_values"], expected["pixel_values"], atol=0, rtol=0)
    padded = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    torch.testing.assert_close(got["pixel_values"], padded(image, return_tensors="pt")["pixel_values"])


def test_convert_vip(tmp_path, original_tokenizer):
    reference = tiny_reference("vip", seed=6)
    src = write_original(tmp_path / "vip-llava-7b", reference, "vip")
    tower = write_tower(tmp_path / "tower", reference)
    dst = tmp_path / "vip-llava-hf"
    assert main(["convert", str(src), str(dst), "--vision-tower", str(tower), "--tokenizer",
                 str(original_tokenizer)]) == 0
    hf = transformers.VipLlavaForConditionalGeneration.from_pretrained(dst).eval()
    assert_same_logits(reference, hf)
    assert hf_processor(dst).chat_template == TEMPLATES["vip"]


def test_convert_errors(tmp_path, tiny_llava_dir, converted, capsys):
    assert main(["convert", str(tiny_llava_dir), str(tmp_path / "out")]) == 2
    assert "is not an original LLaVA checkpoint" in capsys.readouterr().err
    _, dst = converted  # an already converted folder is not an original either
    assert main(["convert", str(dst), str(tmp_path / "out2")]) == 2
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


# ---- LLaVA-NeXT (liuhaotian/llava-v1.6-*) ------------------------------------------------------------
@pytest.mark.parametrize("name, text_type, template", [("llava-v1.6-mistral-7b", "mistral", "mistral"),
                                                       ("llava-v1.6-vicuna-7b", "llama", "llava"),
                                                       ("llava-v1.6-34b", "llama", "chatml")])
def test_convert_next(tmp_path, original_tokenizer, tiny_llava_next_dir, photos, name, text_type, template):
    """Original NeXT -> llava-hf folder: transformers' model and processor give the reference's logits and tokens.

    The 34b case keeps the 32000-token tokenizer (its Yi vocabulary is covered in test_original_next.py);
    it checks that the name picks the ChatML template, as the llava-hf 34b conversion has.
    """
    reference = tiny_next_reference(text_type, seed=7)
    src = write_next_original(tmp_path / name, reference, text_type)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(original_tokenizer / file, src / file)
    tower = write_tower(tmp_path / "tower", reference)
    dst = tmp_path / (name + "-hf")
    assert main(["convert", str(src), str(dst), "--vision-tower", str(tower)]) == 0

    processor = hf_processor(dst)
    assert type(processor) is transformers.LlavaNextProcessor
    assert processor.image_processor.image_grid_pinpoints == assets.NEXT_PINPOINTS
    assert processor.image_processor.crop_size["height"] == assets.NEXT_CROP and processor.patch_size == 7
    assert processor.tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [IMAGE, PAD]
    assert processor.chat_template == TEMPLATES[template]
    batch = next_inputs(processor, photos)
    # the converted processor gives what the llava-hf processor of the same sizes gives
    hub_processor = hf_processor(tiny_llava_next_dir)
    hub_processor.tokenizer.padding_side = "left"  # as the converted tokenizer (and llava-hf's) pads
    hub_style = next_inputs(hub_processor, photos)
    assert batch["input_ids"].tolist() == hub_style["input_ids"].tolist()
    torch.testing.assert_close(batch["pixel_values"], hub_style["pixel_values"])
    ours_processor = AutoProcessor.from_pretrained(dst)
    ours_batch = next_inputs(ours_processor, photos)
    assert ours_batch["input_ids"].tolist() == batch["input_ids"].tolist()
    torch.testing.assert_close(ours_batch["pixel_values"], batch["pixel_values"])

    hf = transformers.LlavaNextForConditionalGeneration.from_pretrained(dst).eval()
    assert_same_next_logits(reference, hf, batch)
    expected = reference.generate(**batch, max_new_tokens=5, do_sample=False).tolist()
    assert hf.generate(**batch, max_new_tokens=5, do_sample=False).tolist() == expected
    ours = LlavaNextForConditionalGeneration.from_pretrained(dst)
    assert ours.generate(**batch, max_new_tokens=5, do_sample=False).tolist() == expected


def test_failed_convert_leaves_no_half_written_folder(tmp_path, original_tokenizer, capsys):
    """The wrong tokenizer fails after the weights are written: neither DST nor a temporary folder remains."""
    from llavakit import demo

    reference = tiny_reference("llava", seed=5)
    src = write_original(tmp_path / "llava-v1.5-original", reference, with_tower=False)
    tower = write_tower(tmp_path / "tower", reference)
    dst = tmp_path / "out" / "llava-hf"
    assert main(["convert", str(src), str(dst), "--vision-tower", str(tower), "--tokenizer",
                 str(demo.TRAINED_DIR)]) == 2
    assert "the model expects" in capsys.readouterr().err
    assert not dst.exists() and list((tmp_path / "out").iterdir()) == []
    (dst / "keep.txt").parent.mkdir(parents=True)
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", str(src), str(dst), "--vision-tower", str(tower)]) == 2  # never overwrites
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
