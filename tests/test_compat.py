"""The older LLaVA API page: its `LlaVa*` names are the real classes, and its example runs as written on a
tiny checkpoint served as `liuhaotian/llava-v1.5-7b` (original layout) and as a llava-hf one."""

from __future__ import annotations

import shutil

import huggingface_hub
import PIL.Image
import pytest
import torch
import transformers

import llavakit
from llavakit import compat
from tests.loading.test_original import TOWER_REPO, tiny_reference, write_original, write_tower

ORIGINAL_REPO, HF_REPO = "liuhaotian/llava-v1.5-7b", "llava-hf/llava-1.5-7b-hf"
MODEL_FILES = ("config.json", "model.safetensors", "generation_config.json")


def add_snapshot(cache, repo: str, folder) -> None:
    """Put every file of `folder` into a Hugging Face cache as `repo`'s main revision."""
    commit = "0" * 40
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llava_dir):
    """An offline cache holding the same tiny model twice (original layout and llava-hf) and its CLIP tower."""
    transformers.logging.set_verbosity_error()
    root = tmp_path_factory.mktemp("old-page")
    reference = tiny_reference("llava")
    original = write_original(root / "original", reference)  # CLIP inside, tower named test-org/tiny-clip
    hub = root / "hf"
    reference.save_pretrained(hub)
    for path in tiny_llava_dir.iterdir():  # tokenizer, processor and chat template files
        if path.name not in MODEL_FILES:
            shutil.copy(path, original / path.name)
            shutil.copy(path, hub / path.name)
    cache = root / "cache"
    add_snapshot(cache, ORIGINAL_REPO, original)
    add_snapshot(cache, HF_REPO, hub)
    add_snapshot(cache, TOWER_REPO, write_tower(root / "tower", reference))
    return cache, reference


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    cache, reference = hub_cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return reference


def test_names_are_the_real_classes():
    assert llavakit.LlaVaConfig is llavakit.LlavaConfig
    assert llavakit.LlaVaModel is llavakit.LlavaModel
    assert issubclass(llavakit.LlaVaForCausalLM, llavakit.LlavaForConditionalGeneration)  # loads any layout
    assert llavakit.LlaVaProcessor is llavakit.LlavaProcessor
    assert llavakit.LlaVaTokenizer is llavakit.LlaVaTokenizerFast is llavakit.LlamaTokenizerFast
    assert llavakit.LlaVaForSequenceClassification is llavakit.LlavaForSequenceClassification
    assert llavakit.LlaVaForMultipleChoice is llavakit.LlavaForMultipleChoice
    for name in dir(compat):
        if name.startswith("LlaVa"):
            assert getattr(llavakit, name) is getattr(compat, name), name


def run_old_page_example(repo: str, image_path) -> tuple[torch.Tensor, str]:
    """The page's example, with the repo id as a parameter and a local photo instead of a URL."""
    from llavakit import LlaVaForCausalLM, LlaVaProcessor

    model = LlaVaForCausalLM.from_pretrained(repo)
    processor = LlaVaProcessor.from_pretrained(repo)

    prompt = "USER: <image>\nWhat is shown in this image? ASSISTANT:"
    image = PIL.Image.open(image_path)
    inputs = processor(text=prompt, images=image, return_tensors="pt")

    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=0.1, top_p=0.9)
    return output, processor.decode(output[0], skip_special_tokens=True)


def test_old_page_example_runs_on_the_original_and_llava_hf_layouts(offline_cache, photos, tiny_llava_dir):
    original_ids, original_text = run_old_page_example(ORIGINAL_REPO, photos["astronaut"])
    hf_ids, hf_text = run_old_page_example(HF_REPO, photos["astronaut"])
    assert original_text.startswith("USER:") and "What is shown in this image?" in original_text
    assert original_ids.shape[1] > llavakit.LlaVaProcessor.from_pretrained(tiny_llava_dir)(
        text="USER: <image>\nWhat is shown in this image? ASSISTANT:", images=PIL.Image.open(photos["astronaut"]),
        return_tensors="pt")["input_ids"].shape[1]  # new tokens were sampled
    assert torch.equal(original_ids, hf_ids) and original_text == hf_text  # same weights, same seed, same tokens


def test_old_page_example_matches_transformers(offline_cache, photos):
    """The same sampling call through transformers on the same weights picks the same tokens."""
    reference = offline_cache
    ours, _ = run_old_page_example(ORIGINAL_REPO, photos["astronaut"])
    processor = transformers.AutoProcessor.from_pretrained(HF_REPO)
    inputs = processor(text="USER: <image>\nWhat is shown in this image? ASSISTANT:",
                       images=PIL.Image.open(photos["astronaut"]), return_tensors="pt")
    torch.manual_seed(0)
    theirs = reference.generate(**inputs, max_new_tokens=12, do_sample=True, temperature=0.1, top_p=0.9)
    assert torch.equal(ours, theirs)


def test_causal_lm_name_loads_the_original_checkpoint_like_transformers(offline_cache):
    reference = offline_cache
    model = llavakit.LlaVaForCausalLM.from_pretrained(ORIGINAL_REPO)
    ids = torch.tensor([[1, 319, 1781, 29901, 1724, 338]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
