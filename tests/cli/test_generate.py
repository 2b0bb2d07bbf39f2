"""`llavakit generate`: the README demo, a real checkpoint folder, and bad input as one-line errors."""

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from llavakit import demo
from llavakit.cli.main import main
from llavakit.training import synthetic
from tests.reference import hf_processor


@pytest.fixture
def demo_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVAKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def random_demo(demo_cache, monkeypatch):
    """The fallback used when the trained demo model is not installed."""
    monkeypatch.setattr(demo, "has_trained_model", lambda: False)
    return demo_cache


def test_random_demo_runs_with_no_arguments_and_says_so(random_demo, capsys):
    assert main(["generate", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr()
    assert "RANDOM weights" in out.err
    assert len(out.out.split()) >= 1
    assert (random_demo / f"demo-{demo.VERSION}" / "model.safetensors").exists()


@pytest.mark.skipif(not demo.has_trained_model(), reason="the trained demo model is not shipped")
@pytest.mark.parametrize("prompt, answer", [
    (None, synthetic.describe(synthetic.EXAMPLE)),  # the README command
    ("What shape is inside the red box?", "square"),
    ("What color is the shape at the bottom right?", "green"),
])
def test_trained_demo_answers_about_the_shipped_example(demo_cache, capsys, prompt, answer):
    assert main(["generate", "--no-stream"] + (["--prompt", prompt] if prompt else [])) == 0
    out = capsys.readouterr()
    assert out.out.strip() == answer
    assert "RANDOM" not in out.err and not demo_cache.exists()  # no random checkpoint was built


def test_shipped_example_is_the_synthetic_example_scene():
    shipped = np.asarray(Image.open(demo.EXAMPLE_IMAGE).convert("RGB"))
    assert np.array_equal(shipped, np.asarray(synthetic.render(synthetic.EXAMPLE)))


@pytest.mark.parametrize("trained", [True, False], ids=["trained", "random"])
def test_demo_checkpoint_is_a_valid_llava_hf_folder(demo_cache, monkeypatch, trained):
    """transformers loads what llavakit wrote (model, tokenizer, processor) and generates the same tokens."""
    import llavakit

    if trained and not demo.has_trained_model():
        pytest.skip("the trained demo model is not shipped")
    if not trained:
        monkeypatch.setattr(demo, "has_trained_model", lambda: False)
    path = demo.demo_checkpoint()
    image = Image.open(demo.EXAMPLE_IMAGE)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is here?"}]}]
    ours_proc = llavakit.AutoProcessor.from_pretrained(path)
    theirs_proc = hf_processor(path)
    prompt = ours_proc.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == theirs_proc.apply_chat_template(conversation, add_generation_prompt=True)
    ours_in = ours_proc(images=image, text=prompt, return_tensors="pt")
    theirs_in = theirs_proc(images=image, text=prompt, return_tensors="pt")
    assert torch.equal(ours_in["input_ids"], theirs_in["input_ids"])
    torch.testing.assert_close(ours_in["pixel_values"], theirs_in["pixel_values"])

    ours = llavakit.LlavaForConditionalGeneration.from_pretrained(path)
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    ours_out = ours.generate(**ours_in, max_new_tokens=10, do_sample=False)
    theirs_out = theirs.generate(**theirs_in, max_new_tokens=10, do_sample=False)
    assert torch.equal(ours_out, theirs_out)


def test_generate_with_a_checkpoint_matches_transformers(tiny_llava_dir, photos, capsys):
    prompt = "Describe the picture."
    assert main(["generate", "--model", str(tiny_llava_dir), "--image", str(photos["chelsea"]),
                 "--prompt", prompt, "--max-new-tokens", "12", "--no-stream"]) == 0
    printed = capsys.readouterr().out.strip()

    processor = hf_processor(tiny_llava_dir)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(photos["chelsea"]), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    expected = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert printed == expected


def test_streamed_output_equals_the_complete_output(tiny_llava_dir, photos, capsys):
    args = ["generate", "--model", str(tiny_llava_dir), "--image", str(photos["coffee"]), "--max-new-tokens", "10"]
    assert main(args) == 0
    streamed = capsys.readouterr().out.strip()
    assert main(args + ["--no-stream"]) == 0
    assert streamed == capsys.readouterr().out.strip()


def test_two_images(tiny_llava_dir, photos, capsys):
    assert main(["generate", "--model", str(tiny_llava_dir), "--image", str(photos["coffee"]),
                 "--image", str(photos["rocket"]), "--max-new-tokens", "4", "--no-stream"]) == 0


@pytest.mark.parametrize("make_args, message", [
    (lambda d, tmp: ["--model", d], "give at least one --image"),
    (lambda d, tmp: ["--model", d, "--image", str(tmp / "missing.png")], "missing.png"),
    (lambda d, tmp: ["--model", d, "--image", str(tmp / "broken.png")], "broken.png"),
    (lambda d, tmp: ["--model", str(tmp / "no-such-model"), "--image", "x.png"], "no-such-model"),
])
def test_bad_input_is_one_clear_line(tiny_llava_dir, tmp_path, capsys, make_args, message):
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    assert main(["generate"] + make_args(str(tiny_llava_dir), tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("llavakit generate: error:") and message in err
    assert "Traceback" not in err


def test_quantize_flag_nf4_matches_transformers_bitsandbytes(tiny_llava_dir, photos, capsys):
    pytest.importorskip("bitsandbytes")
    prompt = "Describe the picture."
    assert main(["generate", "--model", str(tiny_llava_dir), "--image", str(photos["chelsea"]), "--prompt", prompt,
                 "--max-new-tokens", "8", "--no-stream", "--quantize", "nf4", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.strip()
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", llm_int8_skip_modules=[
        "model.vision_tower", "model.multi_modal_projector", "lm_head"])  # llavakit's default skips, their names
    processor = hf_processor(tiny_llava_dir)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, quantization_config=config,
                                                                       device_map="cpu")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(photos["chelsea"]), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert printed == processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_beam_search_flags_print_transformers_beams(tiny_llava_dir, photos, capsys):
    prompt = "Describe the picture."
    assert main(["generate", "--model", str(tiny_llava_dir), "--image", str(photos["chelsea"]), "--prompt", prompt,
                 "--max-new-tokens", "6", "--num-beams", "3", "--num-return-sequences", "2",
                 "--length-penalty", "0.5", "--early-stopping", "never", "--no-repeat-ngram-size", "2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()

    processor = transformers.AutoProcessor.from_pretrained(tiny_llava_dir)
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(photos["chelsea"]), text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2, length_penalty=0.5,
                         early_stopping="never", no_repeat_ngram_size=2)
    expected = [f"[{i + 1}] " + processor.decode(row[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
                for i, row in enumerate(out)]
    assert printed == expected


def test_prompt_lookup_flag_prints_the_greedy_answer(tiny_llava_dir, photos, capsys):
    base = ["generate", "--model", str(tiny_llava_dir), "--image", str(photos["chelsea"]), "--max-new-tokens", "10",
            "--no-stream"]
    assert main(base) == 0
    greedy = capsys.readouterr().out
    assert main(base + ["--prompt-lookup-num-tokens", "3"]) == 0
    assert capsys.readouterr().out == greedy
    assert main(base + ["--assistant-model", str(tiny_llava_dir)]) == 0
    assert capsys.readouterr().out == greedy
