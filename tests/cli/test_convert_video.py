"""`llavakit convert` on original lmms-lab LLaVA-OneVision and LLaVA-NeXT-Video folders: the llava-hf folders it
writes load in transformers (model and processor) and give the converted model's logits."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers

from llavakit import AutoModelForImageTextToText, AutoProcessor
from llavakit.cli.main import main
from llavakit.processing.templates import TEMPLATES
from tests import assets
from tests.loading.test_original import OLD_VOCAB
from tests.loading.test_original_video import (next_video_original_config, onevision_inputs,
                                               onevision_original_config, siglip_tower_dir, tiny_next_video_reference,
                                               tiny_onevision_reference, write_original)


@pytest.fixture(scope="module")
def original_tokenizer(tmp_path_factory, tokenizer_dir):
    """The Mistral tokenizer as an original repo has it: 32000 tokens, no <image>, <video> or <pad>."""
    out = tmp_path_factory.mktemp("original-tokenizer")
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < OLD_VOCAB]
    (out / "tokenizer.json").write_text(json.dumps(data))
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    config["added_tokens_decoder"] = {k: v for k, v in config.get("added_tokens_decoder", {}).items()
                                      if int(k) < OLD_VOCAB}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def convert(tmp_path, original_tokenizer, reference, config, tower) -> tuple:
    src = write_original(tmp_path / "original", reference, config, with_tower=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(original_tokenizer / name, src / name)
    dst = tmp_path / "llava-hf"
    assert main(["convert", str(src), str(dst), "--vision-tower", str(tower)]) == 0
    return src, dst


def test_convert_onevision(tmp_path, original_tokenizer):
    reference = tiny_onevision_reference(seed=1)
    tower = siglip_tower_dir(tmp_path / "tower", reference)
    _, dst = convert(tmp_path, original_tokenizer, reference, onevision_original_config(), tower)
    saved = json.loads((dst / "config.json").read_text())
    assert saved["model_type"] == "llava_onevision" and saved["vision_aspect_ratio"] == "anyres_max_4"
    hf = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(dst).eval()
    inputs = onevision_inputs(reference)
    with torch.no_grad():
        torch.testing.assert_close(hf(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=0)

    hf_processor = transformers.AutoProcessor.from_pretrained(dst)
    processor = AutoProcessor.from_pretrained(dst)
    assert type(hf_processor).__name__ == type(processor).__name__ == "LlavaOnevisionProcessor"
    assert (processor.image_token_id, processor.video_token_id) == (OLD_VOCAB, OLD_VOCAB + 1)
    assert (hf_processor.image_token_id, hf_processor.video_token_id) == (OLD_VOCAB, OLD_VOCAB + 1)
    assert hf_processor.num_image_tokens == 16 and hf_processor.vision_aspect_ratio == "anyres_max_4"
    assert hf_processor.chat_template == TEMPLATES["onevision"]
    frames = torch.randint(0, 256, (2, 40, 50, 3), dtype=torch.uint8).numpy()
    text = "<|im_start|>user <video>\nHi<|im_end|><|im_start|>assistant\n"
    ours_inputs = processor(text=text, videos=[frames], return_tensors="pt")
    hf_inputs = hf_processor(text=text, videos=[frames], return_tensors="pt")
    assert torch.equal(ours_inputs["input_ids"], hf_inputs["input_ids"])
    model = AutoModelForImageTextToText.from_pretrained(dst)
    with torch.no_grad():
        torch.testing.assert_close(model(**ours_inputs).logits, hf(**hf_inputs).logits, atol=1e-5, rtol=0)


def test_convert_next_video(tmp_path, original_tokenizer):
    reference = tiny_next_video_reference(seed=1)
    tower = tmp_path / "tower"
    clip = transformers.CLIPVisionModel(reference.config.vision_config)
    clip.load_state_dict({k.removeprefix("model.vision_tower."): v for k, v in reference.state_dict().items()
                          if k.startswith("model.vision_tower.")})
    clip.save_pretrained(tower)
    _, dst = convert(tmp_path, original_tokenizer, reference, next_video_original_config(), tower)
    hf = transformers.LlavaNextVideoForConditionalGeneration.from_pretrained(dst).eval()
    hf_processor = transformers.AutoProcessor.from_pretrained(dst)
    processor = AutoProcessor.from_pretrained(dst)
    assert type(hf_processor).__name__ == type(processor).__name__ == "LlavaNextVideoProcessor"
    assert (processor.video_token_id, processor.image_token_id) == (OLD_VOCAB, OLD_VOCAB + 1)
    assert processor.tokenizer.pad_token_id == OLD_VOCAB + 2 == hf_processor.tokenizer.pad_token_id
    frames = torch.randint(0, 256, (3, 40, 50, 3), dtype=torch.uint8).numpy()
    text = "USER: <video>\nWhat happens? ASSISTANT:"
    ours_inputs = processor(text=text, videos=[frames], return_tensors="pt")
    hf_inputs = hf_processor(text=text, videos=[frames], return_tensors="pt")
    assert torch.equal(ours_inputs["input_ids"], hf_inputs["input_ids"])
    assert int((ours_inputs["input_ids"] == OLD_VOCAB).sum()) == 3 * 4  # 3 frames x 2x2 pooled patches
    model = AutoModelForImageTextToText.from_pretrained(dst)
    with torch.no_grad():
        expected = reference(**hf_inputs).logits
        torch.testing.assert_close(hf(**hf_inputs).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(**ours_inputs).logits, expected, atol=1e-5, rtol=0)
    assert assets.NEXT_PINPOINTS == hf_processor.image_processor.image_grid_pinpoints
