"""LoRA: our saved adapter loads onto transformers' model with peft and gives our logits; merge gives a plain checkpoint."""

from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from llavakit import AutoProcessor, LlavaForConditionalGeneration  # noqa: E402
from llavakit.cli.main import main as cli  # noqa: E402
from llavakit.training import freeze  # noqa: E402
from llavakit.training.lora import add_lora, load_adapter, save_adapter  # noqa: E402


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_llava_dir):
    """An adapter with non-zero LoRA B (a fresh one is a no-op) and a changed projector, saved peft-style."""
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    freeze.apply_stage(model, "lora")
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n or "lm_head" in n for n in trainable)
    folder = tmp_path_factory.mktemp("adapter")
    save_adapter(peft_model, folder)
    return peft_model.eval(), folder


def _inputs(tiny_llava_dir, photos):
    from PIL import Image

    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    return processor(images=Image.open(photos["chelsea"]), text="USER: <image>\nWhat is it? ASSISTANT:",
                     return_tensors="pt")


def test_adapter_loads_in_transformers_peft_with_same_logits(adapter, tiny_llava_dir, photos):
    import transformers

    ours, folder = adapter
    inputs = _inputs(tiny_llava_dir, photos)
    with torch.no_grad():
        expected = ours(**inputs).logits
        base = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
        plain = base(**inputs).logits
        theirs = peft.PeftModel.from_pretrained(base, folder).eval()(**inputs).logits
    assert (expected - plain).abs().max() > 1e-3  # the adapter changes the output
    torch.testing.assert_close(theirs, expected, rtol=1e-4, atol=1e-4)


def test_reload_and_merge(adapter, tiny_llava_dir, photos, tmp_path):
    import transformers

    ours, folder = adapter
    inputs = _inputs(tiny_llava_dir, photos)
    reloaded = load_adapter(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir), folder).eval()
    with torch.no_grad():
        expected = ours(**inputs).logits
        torch.testing.assert_close(reloaded(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
    assert cli(["merge", "--adapter", str(folder), "--base", str(tiny_llava_dir), "--output-dir", str(tmp_path)]) == 0
    merged = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, expected, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "tokenizer.json").exists()
