"""QLoRA: LoRA adapters over a 4-bit nf4 language model train (loss falls, gradients right after an eval pass)
and save in peft's format, loadable by transformers + peft on the unquantized base."""

from __future__ import annotations

import json
import sys

import pytest
import torch

peft = pytest.importorskip("peft")
bnb = pytest.importorskip("bitsandbytes")

from llavakit import LlavaForConditionalGeneration  # noqa: E402
from llavakit.cli.main import main as cli  # noqa: E402
from llavakit.training import freeze  # noqa: E402
from llavakit.training.lora import add_lora, check_qlora_available, load_adapter, load_qlora_base, save_adapter  # noqa: E402
from tests.parity import image_prompt, random_pixels  # noqa: E402

IDS = torch.tensor([image_prompt(1) + [5, 6, 7, 8]])
PIXELS = random_pixels(1)


def _qlora_model(path, seed=0):
    torch.manual_seed(seed)
    model = load_qlora_base(path)
    freeze.apply_stage(model, "qlora")
    return add_lora(model, r=4, alpha=8, dropout=0.0)


def _lora_grads(model):
    model.train()
    model(input_ids=IDS, pixel_values=PIXELS, labels=IDS).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_base_is_4bit_nf4_with_full_precision_vision_and_projector(tiny_llava_dir):
    model = _qlora_model(tiny_llava_dir)
    base = model.base_model.model
    layer = base.language_model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer) is bnb.nn.Linear4bit and layer.weight.quant_type == "nf4"
    assert base.multi_modal_projector.linear_1.weight.dtype == torch.float32
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "multi_modal_projector" in n for n in trainable)


def test_training_steps_reduce_the_loss(tiny_llava_dir):
    model = _qlora_model(tiny_llava_dir)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(6):
        loss = model(input_ids=IDS, pixel_values=PIXELS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


def test_gradients_unchanged_by_an_eval_pass(tiny_llava_dir):
    """bitsandbytes repacks CPU 4-bit weights on an eval forward; the QLoRA base must not, or backward goes wrong."""
    def grads(evaluate_first: bool):
        model = _qlora_model(tiny_llava_dir)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=IDS, pixel_values=PIXELS)
        return _lora_grads(model)

    plain, after_eval = grads(False), grads(True)
    assert plain.keys() == after_eval.keys()
    for name in plain:
        torch.testing.assert_close(after_eval[name], plain[name], rtol=0, atol=0, msg=name)


def test_adapter_loads_on_the_unquantized_base_in_transformers_peft(tiny_llava_dir, tmp_path):
    import transformers

    model = _qlora_model(tiny_llava_dir)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(input_ids=IDS, pixel_values=PIXELS, labels=IDS).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llava_dir)

    ours = load_adapter(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir), tmp_path).eval()
    base = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).eval()
    with torch.no_grad():
        plain = base(input_ids=IDS, pixel_values=PIXELS).logits
        theirs = peft.PeftModel.from_pretrained(base, tmp_path).eval()(input_ids=IDS, pixel_values=PIXELS).logits
        expected = ours(input_ids=IDS, pixel_values=PIXELS).logits
    assert (theirs - plain).abs().max() > 1e-2  # the trained adapter changes the output
    torch.testing.assert_close(theirs, expected, rtol=1e-4, atol=1e-4)


def test_cli_qlora_writes_an_adapter(tiny_llava_dir, photos, tmp_path):
    import shutil

    shutil.copy(photos["coffee"], tmp_path / "coffee.png")
    records = [{"image": "coffee.png", "conversations": [{"from": "human", "value": "<image>\nWhat is this?"},
                                                         {"from": "gpt", "value": f"Coffee {i}."}]} for i in range(4)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    out = tmp_path / "qlora"
    assert cli(["train", "--model", str(tiny_llava_dir), "--data", str(tmp_path / "data.json"), "--image-folder",
                str(tmp_path), "--output-dir", str(out), "--stage", "qlora", "--lora-r", "4", "--lora-alpha", "8",
                "--max-steps", "2", "--batch-size", "2", "--eval-split", "0.25", "--eval-steps", "1",
                "--quiet"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and "eval_loss" in log[-1]


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ValueError, match="QLoRA \\(--stage qlora\\) needs bitsandbytes"):
        check_qlora_available()
