"""AutoProcessor / AutoImageProcessor dispatch, and the lazy top-level exports."""

import json
import shutil

import pytest
import transformers

import llavakit
from llavakit import AutoImageProcessor, AutoProcessor, CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast
from tests.reference import hf_processor


@pytest.mark.parametrize("layout", ["tiny_llava_dir", "tiny_llava_hub_dir", "tiny_mistral_llava_dir"])
def test_llava_checkpoints_give_a_llava_processor(request, layout):
    folder = request.getfixturevalue(layout)
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, LlavaProcessor)
    assert type(hf_processor(folder)).__name__ == "LlavaProcessor"
    assert processor.num_image_tokens(28, 28) == 16


def test_tokenizer_only_folder_gives_the_tokenizer(tokenizer_dir):
    tokenizer = AutoProcessor.from_pretrained(tokenizer_dir)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer("hi")["input_ids"] == hf_processor(tokenizer_dir)("hi")["input_ids"]


def test_model_type_dispatch_without_processor_config(tiny_llava_hub_dir, tmp_path):
    folder = tmp_path / "no-processor-config"
    shutil.copytree(tiny_llava_hub_dir, folder)
    (folder / "processor_config.json").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("processor_class", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, LlavaProcessor) and processor.patch_size is None  # nothing says the patch size


def test_image_processor_only_folder(tiny_llava_hub_dir, tmp_path):
    shutil.copy(tiny_llava_hub_dir / "preprocessor_config.json", tmp_path / "preprocessor_config.json")
    assert isinstance(AutoProcessor.from_pretrained(tmp_path), CLIPImageProcessor)


def test_unsupported_checkpoints_name_what_is_supported(tmp_path):
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}))
    with pytest.raises(ValueError, match="'Qwen2VLProcessor'.*supported: \\[.*'LlavaProcessor'.*\\]"):
        AutoProcessor.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ValueError, match="'whisper'.*supported model types: \\[.*'llava'.*\\]"):
        AutoProcessor.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="cannot find a processor"):
        AutoProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Idefics3ImageProcessor"}))
    with pytest.raises(ValueError, match="'Idefics3ImageProcessor' is not supported.*CLIPImageProcessor"):
        AutoImageProcessor.from_pretrained(tmp_path)


def test_auto_image_processor_reads_both_layouts(tiny_llava_dir, tiny_llava_hub_dir):
    new = AutoImageProcessor.from_pretrained(tiny_llava_dir)
    old = AutoImageProcessor.from_pretrained(tiny_llava_hub_dir)
    assert new.to_dict() == old.to_dict()
    assert AutoImageProcessor.from_pretrained(tiny_llava_dir, crop_size={"height": 14, "width": 14}).crop_size == \
        {"height": 14, "width": 14}


def test_top_level_exports():
    for name in ("BatchFeature", "CLIPImageProcessor", "PreTrainedTokenizerFast", "AutoTokenizer",
                 "LlamaTokenizerFast", "LlavaProcessor", "AutoProcessor", "AutoImageProcessor"):
        assert getattr(llavakit, name).__name__ == name


def test_transformers_only_loading_arguments_are_accepted(tiny_llava_dir, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_llava_dir, trust_remote_code=True, use_fast=True)
    assert isinstance(processor, LlavaProcessor)
    tokenizer = llavakit.AutoTokenizer.from_pretrained(tiny_llava_dir, use_fast=True, force_download=False)
    tokenizer.save_pretrained(tmp_path)
    assert "use_fast" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    image_processor = AutoImageProcessor.from_pretrained(tiny_llava_dir, trust_remote_code=True)
    assert "trust_remote_code" not in image_processor.to_dict()
