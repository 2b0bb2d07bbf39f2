"""Original LLaVA checkpoints as their repos ship them give the original code's prompts, ids, pixels and tiling.

The reference (original_reference.json, original_pixels.npz) was recorded from the original code itself,
llava-torch 1.2.2.post1 with transformers 4.37.2, by scripts/record_original_reference.py. The folders
here are laid out as the repos are: llava-v1.5-7b with pytorch_model-0000N-of-00002.bin shards and only
tokenizer.model + tokenizer_config.json; llava-v1.6-mistral-7b with safetensors and tokenizer.model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mistral_common
import numpy as np
import PIL.Image
import pytest
import torch
import transformers

import llavakit
from llavakit import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, LlavaProcessor
from llavakit.anyres import select_best_resolution
from llavakit.loading import original
from llavakit.processing.image_llava import LlavaImageProcessor
from llavakit.processing.image_next import LlavaNextImageProcessor
from llavakit.processing.original_llava import (OriginalLlavaNextProcessor, OriginalLlavaProcessor, model_name,
                                                original_tokenizer)
from llavakit.processing.sentencepiece import convert_sentencepiece
from llavakit.processing.tokenizer import AutoTokenizer
from tests import assets
from tests.loading.test_original import (OLD_VOCAB, TOWER_REPO, fake_hub_cache, original_config, original_state,
                                         tiny_reference, write_lora, write_tower)
from tests.loading.test_original_next import tiny_next_reference, write_next_original

HERE = Path(__file__).parent
REFERENCE = json.loads((HERE / "original_reference.json").read_text())
PIXELS = np.load(HERE / "original_pixels.npz")
ORIGINAL_IMAGE = REFERENCE["image_token_index"]  # -200 in the original's ids
SPIECE = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
TINY_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]  # as the tiny v1.6 config.json writes them
CONVERSATION = REFERENCE["conversations"]["multi"]


def expected_ids(ids: list[int], image_tokens: int | list[int] = 1) -> list[int]:
    """The recorded ids with each -200 replaced by the image token, repeated per image feature."""
    counts = iter([image_tokens] * ids.count(ORIGINAL_IMAGE) if isinstance(image_tokens, int) else image_tokens)
    out = []
    for token in ids:
        out.extend([OLD_VOCAB] * next(counts) if token == ORIGINAL_IMAGE else [token])
    return out


def write_tokenizer(folder: Path, **config) -> Path:
    """tokenizer.model + tokenizer_config.json as liuhaotian/llava-v1.5-7b has them (no tokenizer.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SPIECE, folder / "tokenizer.model")
    data = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "pad_token": "<unk>", "legacy": False, "model_max_length": 2048,
            "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
            "clean_up_tokenization_spaces": False}
    data.update(config)
    (folder / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    return folder


def write_bin_shards(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """pytorch_model-00001-of-00002.bin + pytorch_model-00002-of-00002.bin + the index, as the v1.5 repos ship."""
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
              "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    weight_map = {}
    for name, names in shards.items():
        torch.save({k: state[k] for k in names}, folder / name)
        weight_map.update(dict.fromkeys(names, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def add_preprocessor(tower_dir: Path) -> Path:
    """The tower repo's preprocessor_config.json (openai/clip-vit-large-patch14-336's, at the tiny size)."""
    (tower_dir / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 28, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 28}))
    return tower_dir


def reference_images() -> dict[str, PIL.Image.Image]:
    """The images the reference processed (the script's crops and resizes)."""
    photos = assets.photos_dir()
    return {"rocket": PIL.Image.open(photos / "rocket.jpg").convert("RGB"),
            "astronaut_tall": PIL.Image.open(photos / "astronaut.png").convert("RGB").crop((100, 0, 260, 400)),
            "small_wide": PIL.Image.open(photos / "chelsea.png").convert("RGB").resize((30, 20))}


# ---- fixtures: the repos -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v15(tmp_path_factory):
    """(reference model, llava-v1.5-7b folder, hub cache holding the tower) with .bin shards and tokenizer.model."""
    reference = tiny_reference("llava", seed=11)
    root = tmp_path_factory.mktemp("v15")
    folder = write_tokenizer(root / "llava-v1.5-7b")
    write_bin_shards(folder, original_state(reference, with_tower=False))
    (folder / "config.json").write_text(json.dumps(original_config("llava", TOWER_REPO)))
    tower = add_preprocessor(write_tower(root / "tower", reference))
    cache = fake_hub_cache(root / "cache", tower)
    shutil.copy(tower / "preprocessor_config.json",
                next((cache / "models--test-org--tiny-clip" / "snapshots").iterdir()) / "preprocessor_config.json")
    return reference, folder, cache


@pytest.fixture(scope="module")
def v16(tmp_path_factory):
    """(reference tiling the original's way, llava-v1.6-mistral-7b folder, tower): safetensors, tokenizer.model."""
    reference = tiny_next_reference("mistral", seed=12)
    root = tmp_path_factory.mktemp("v16")
    folder = write_next_original(root / "llava-v1.6-mistral-7b", reference, "mistral",
                                 image_grid_pinpoints=TINY_PINPOINTS)
    write_tokenizer(folder, legacy=True)
    tower = add_preprocessor(write_tower(root / "tower", reference))
    # transformers' LlavaNext tiling the original's way: the (width, height) list read as (height, width)
    reference.config.image_grid_pinpoints = original.grid_pinpoints(TINY_PINPOINTS, assets.NEXT_CROP)
    return reference, folder, tower


# ---- the tokenizer: SentencePiece conversion and tokenizer_image_token ----------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_converted_sentencepiece_gives_the_slow_tokenizers_ids(tmp_path, legacy):
    folder = write_tokenizer(tmp_path / "tok", legacy=legacy)
    tokenizer, flag = original_tokenizer(folder, {}, fast_path=False, image_token_index=OLD_VOCAB)
    assert flag is legacy and tokenizer.convert_tokens_to_ids("<image>") == OLD_VOCAB
    processor = OriginalLlavaProcessor(LlavaImageProcessor(), tokenizer, patch_size=14)
    processor.legacy = flag
    recorded = REFERENCE["ids"][f"slow_legacy_{str(legacy).lower()}"]
    assert len(recorded) > 30
    for text, ids in recorded.items():
        assert processor.encode_prompt(text) == expected_ids(ids), text
    # after </s>: the slow tokenizer starts a new word only with legacy=True
    after_eos = tokenizer.convert_ids_to_tokens(processor.encode_prompt("A photo.</s>USER:"))[5]
    assert after_eos == ("▁US" if legacy else "USER")


def test_the_mistral_path_uses_the_fast_tokenizers_ids(v16):
    """load_pretrained_model reads 'mistral' models with use_fast on: transformers 4.37's fast conversion."""
    _, folder, tower = v16
    processor = AutoProcessor.from_pretrained(folder, vision_tower=tower)
    assert processor.legacy is True
    for text, ids in REFERENCE["ids"]["fast"].items():
        assert processor.encode_prompt(text) == expected_ids(ids), text


def test_plain_tokenizer_reads_tokenizer_model(tmp_path):
    """AutoTokenizer (and so `llavakit convert`) reads a folder with tokenizer.model and no tokenizer.json."""
    folder = write_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == 32000 and tokenizer.bos_token_id == 1 and tokenizer.pad_token == "<unk>"
    for mode in ("llava_v1", "mistral_instruct", "chatml_direct"):
        text = REFERENCE["prompts"][mode]["text_only"]  # no <image>: one chunk, so plain ids are the original's
        assert tokenizer(text)["input_ids"] == REFERENCE["ids"]["slow_legacy_false"][text], mode
    ids = tokenizer("Hello  there\n")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello  there\n"


def test_sentencepiece_errors(tmp_path):
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        (tmp_path / "bad.model").write_bytes(b"\xff\xff not a model")
        convert_sentencepiece(tmp_path / "bad.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json nor tokenizer.model"):
        AutoTokenizer.from_pretrained(tmp_path / "empty")


# ---- prompts -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(REFERENCE["prompts"]))
def test_templates_print_the_original_prompts(mode):
    from llavakit.processing import chat_template as chat
    from llavakit.processing.templates import TEMPLATES

    for name, prompt in REFERENCE["prompts"][mode].items():
        conversation = REFERENCE["conversations"][name]
        assert chat.render(TEMPLATES[mode], [conversation], add_generation_prompt=True)[0] == [prompt], name


@pytest.mark.parametrize("path, mode", [("liuhaotian/llava-v1.5-7b", "llava_v1"),
                                        ("liuhaotian/llava-v1.6-mistral-7b", "mistral_instruct"),
                                        ("liuhaotian/llava-v1.6-34b", "chatml_direct"),
                                        ("liuhaotian/llava-v1.5-7b-lora", "llava_v1"),
                                        ("./checkpoints/llava-llama-2-13b-chat/", "llava_llama_2"),
                                        ("my-model", "llava_v0")])
def test_conv_mode_from_the_model_name(path, mode):
    from llavakit.processing.conversations import conv_mode_for

    assert conv_mode_for(model_name(path)) == mode
    assert model_name("out/llava-v1.5/checkpoint-500") == "llava-v1.5_checkpoint-500"


# ---- images: tiling choice, feature counts, pixels ---------------------------------------------------------
@pytest.mark.parametrize("entry", REFERENCE["anyres"], ids=lambda e: f"{e['tower_size']}-{e['size_wh']}")
def test_anyres_tiles_as_the_original(entry):
    width, height = entry["size_wh"]
    pinpoints = original.grid_pinpoints(entry["pinpoints"], entry["tower_size"])
    best_w, best_h = entry["best_wh"]
    assert select_best_resolution((height, width), pinpoints) == (best_h, best_w)
    image_processor = LlavaNextImageProcessor(image_grid_pinpoints=pinpoints,
                                              size={"shortest_edge": entry["tower_size"]},
                                              crop_size=entry["tower_size"])
    processor = LlavaNextProcessorCounts(image_processor, entry["patch_size"])
    assert processor.num_image_tokens(height, width) == entry["features"]


class LlavaNextProcessorCounts:
    """LlavaNextProcessor.num_image_tokens without a tokenizer (the count needs only the image side)."""

    def __init__(self, image_processor, patch_size):
        self.image_processor, self.patch_size = image_processor, patch_size
        self.vision_feature_select_strategy, self.num_additional_image_tokens = "default", 1

    num_image_tokens = llavakit.LlavaNextProcessor.num_image_tokens


def test_llava_hf_reading_picks_the_transposed_canvas():
    """The documented difference: llava-hf configs read the same list as (height, width)."""
    entry = next(e for e in REFERENCE["anyres"] if e["size_wh"] == [300, 200] and e["tower_size"] == 336)
    assert entry["features"] == 976
    hf = LlavaNextProcessorCounts(LlavaNextImageProcessor(image_grid_pinpoints=entry["pinpoints"],
                                                          size={"shortest_edge": 336}, crop_size=336), 14)
    assert hf.num_image_tokens(200, 300) == 1464


@pytest.mark.parametrize("name", ["rocket", "astronaut_tall", "small_wide"])
def test_pixels_match_the_original(v15, v16, name):
    image = reference_images()[name]
    assert list(image.size) == REFERENCE["images"][name]
    _, folder, cache = v15
    pad = AutoProcessor.from_pretrained(folder, cache_dir=str(cache), local_files_only=True)
    got = pad.image_processor(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(got, PIXELS[f"pad/{name}"], atol=1e-6, rtol=0)
    _, folder, tower = v16
    anyres = AutoProcessor.from_pretrained(folder, vision_tower=tower)
    got = anyres.image_processor(image, return_tensors="np")["pixel_values"][0]
    assert got.shape == PIXELS[f"anyres/{name}"].shape
    np.testing.assert_allclose(got, PIXELS[f"anyres/{name}"], atol=1e-6, rtol=0)


# ---- end to end: processor + model -------------------------------------------------------------------------
def test_v15_folder_end_to_end(v15, photos):
    """AutoProcessor and the model on the v1.5 layout: the original prompt and ids; transformers' tokens."""
    reference, folder, cache = v15
    hub = dict(cache_dir=str(cache), local_files_only=True)
    processor = AutoProcessor.from_pretrained(folder, **hub)
    assert type(processor) is OriginalLlavaProcessor and processor.legacy is False
    assert type(LlavaProcessor.from_pretrained(folder, **hub)) is OriginalLlavaProcessor  # LlaVaProcessor too
    prompt = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert prompt == REFERENCE["prompts"]["llava_v1"]["multi"]
    image = PIL.Image.open(photos["rocket"])
    batch = processor(images=image, text=prompt, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == expected_ids(REFERENCE["ids"]["slow_legacy_false"][prompt],
                                                          assets.IMAGE_TOKENS)
    ids = batch["input_ids"][0].tolist()
    after_image = ids.index(OLD_VOCAB) + assets.IMAGE_TOKENS
    assert processor.tokenizer.convert_ids_to_tokens(ids[after_image:after_image + 2]) == ["▁", "<0x0A>"]

    with pytest.raises(Exception, match="use_safetensors=False"):
        LlavaForConditionalGeneration.from_pretrained(folder, **hub)
    model = LlavaForConditionalGeneration.from_pretrained(folder, use_safetensors=False, **hub)
    inputs = {k: v for k, v in batch.items()}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)
    expected = reference.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert model.generate(**inputs, max_new_tokens=5, do_sample=False).tolist() == expected.tolist()

    # a left-padded batch: each row keeps its own ids
    short = processor.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True)
    batch = processor(images=[image, image], text=[prompt, short], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == len(expected_ids(REFERENCE["ids"]["slow_legacy_false"][prompt],
                                                           assets.IMAGE_TOKENS))
    assert batch["attention_mask"][1].tolist().count(0) > 0 and batch["input_ids"][1, 0] == 0  # <unk> pads left
    with pytest.raises(ValueError, match="truncation.*original"):
        processor(images=image, text=prompt, truncation=True, max_length=8)


def test_v16_folder_end_to_end(v16, photos):
    """llava-v1.6-mistral-7b: mistral_instruct prompt, fast-path ids, the original's tiling; alias loads it."""
    reference, folder, tower = v16
    processor = AutoProcessor.from_pretrained(folder, vision_tower=tower)
    assert type(processor) is OriginalLlavaNextProcessor
    prompt = processor.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert prompt == REFERENCE["prompts"]["mistral_instruct"]["multi"]
    image = reference_images()["small_wide"]  # 30x20: every canvas ties; the original picks the tall one
    batch = processor(images=image, text=prompt, return_tensors="pt")
    features = next(e["features"] for e in REFERENCE["anyres"]
                    if e["size_wh"] == [30, 20] and e["tower_size"] == assets.NEXT_CROP)
    assert batch["input_ids"][0].tolist() == expected_ids(REFERENCE["ids"]["fast"][prompt], features)
    assert batch["image_sizes"].tolist() == [[20, 30]]

    model = llavakit.LlaVaForCausalLM.from_pretrained(folder, vision_tower=tower)
    assert type(model) is LlavaNextForConditionalGeneration
    assert model.config.image_grid_pinpoints == reference.config.image_grid_pinpoints
    inputs = dict(batch)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, atol=1e-5, rtol=1e-5)
    expected = reference.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert model.generate(**inputs, max_new_tokens=5, do_sample=False).tolist() == expected.tolist()


def test_lora_folder_answers_as_load_pretrained_model(tmp_path, v15, photos):
    """llava-v1.5-7b-lora + its base: the base's tokenizer (the folder ships none), the merged weights, the
    original prompt and ids; `llavakit convert --model-base` writes the same."""
    from llavakit.cli.main import main

    reference, v15_folder, cache = v15
    base, lora = write_lora(tmp_path, reference, base_dir=write_tokenizer(tmp_path / "vicuna-7b-v1.5"))
    tower = v15_folder.parent / "tower"
    processor = AutoProcessor.from_pretrained(lora, model_base=base, vision_tower=tower)
    prompt = processor.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True)
    assert prompt == REFERENCE["prompts"]["llava_v1"]["single"]
    batch = processor(images=PIL.Image.open(photos["rocket"]), text=prompt, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == expected_ids(REFERENCE["ids"]["slow_legacy_false"][prompt],
                                                          assets.IMAGE_TOKENS)
    model = LlavaForConditionalGeneration.from_pretrained(lora, model_base=base, vision_tower=tower,
                                                          use_safetensors=False)
    expected = reference.generate(**batch, max_new_tokens=5, do_sample=False)
    assert model.generate(**batch, max_new_tokens=5, do_sample=False).tolist() == expected.tolist()
    with pytest.raises(FileNotFoundError, match="tokenizer.model of lmsys/vicuna-7b-v1.5"):  # adapter_config's base
        json.dump({"r": 2, "lora_alpha": 4, "base_model_name_or_path": "lmsys/vicuna-7b-v1.5"},
                  (lora / "adapter_config.json").open("w"))
        AutoProcessor.from_pretrained(lora, cache_dir=str(cache), local_files_only=True)
    json.dump({"r": 2, "lora_alpha": 4}, (lora / "adapter_config.json").open("w"))
    dst = tmp_path / "converted"
    assert main(["convert", str(lora), str(dst), "--vision-tower", str(tower), "--model-base", str(base),
                 "--allow-pickle"]) == 0
    assert transformers.AutoTokenizer.from_pretrained(dst).convert_tokens_to_ids("<image>") == OLD_VOCAB


def test_processor_errors(tmp_path, v15):
    _, folder, cache = v15
    copy = tmp_path / "llava-v1.5-7b"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.model").unlink()
    with pytest.raises(ValueError, match="has no tokenizer"):
        AutoProcessor.from_pretrained(copy, cache_dir=str(cache), local_files_only=True)
    shutil.copy(SPIECE, copy / "tokenizer.model")
    data = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(dict(data, vocab_size=32001)))
    with pytest.raises(ValueError, match="<image> at id 32000.*32001"):
        AutoProcessor.from_pretrained(copy, cache_dir=str(cache), local_files_only=True)
    (copy / "config.json").write_text(json.dumps(dict(data, mm_vision_tower="test-org/no-such-tower")))
    with pytest.raises((ValueError, OSError), match="no-such-tower"):
        AutoProcessor.from_pretrained(copy, cache_dir=str(cache), local_files_only=True)


def test_convert_reads_tokenizer_model(tmp_path, v15):
    """`llavakit convert` on the v1.5 layout (tokenizer.model only) writes a tokenizer.json transformers reads."""
    from llavakit.cli.main import main

    _, folder, _ = v15
    dst = tmp_path / "llava-1.5-7b-hf"
    assert main(["convert", str(folder), str(dst), "--vision-tower", str(folder.parent / "tower"),
                 "--allow-pickle"]) == 0
    assert (dst / "tokenizer.json").exists()
    hf = transformers.AutoTokenizer.from_pretrained(dst)
    assert hf.convert_tokens_to_ids(["<image>", "<pad>"]) == [OLD_VOCAB, OLD_VOCAB + 1]
    for mode in ("llava_v1", "mistral_instruct"):
        text = REFERENCE["prompts"][mode]["text_only"]
        assert hf(text)["input_ids"] == REFERENCE["ids"]["slow_legacy_false"][text], mode


@pytest.mark.parametrize("model_type, name, mode", [("llava", "llava-v1.5-13b", "llava_v1"),
                                                    ("llava_llama", "llava-v1.6-vicuna-7b", "llava_v1"),
                                                    ("llava_mistral", "llava-v1.6-mistral-7b", "mistral_instruct"),
                                                    ("llava_llama", "llava-v1.6-34b", "chatml_direct"),
                                                    ("llava_qwen", "llava-next-72b", "qwen")])
def test_every_original_model_type_gets_a_processor(tmp_path, v15, model_type, name, mode):
    from llavakit.processing.templates import TEMPLATES

    _, folder, cache = v15
    copy = tmp_path / name
    copy.mkdir()
    for file in ("config.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(folder / file, copy / file)
    data = json.loads((folder / "config.json").read_text())
    if model_type == "llava_qwen":  # Qwen decoders have more embedding rows than tokens
        data.update(vocab_size=32064, architectures=["LlavaQwenForCausalLM"])
    (copy / "config.json").write_text(json.dumps(dict(data, model_type=model_type)))
    processor = AutoProcessor.from_pretrained(copy, cache_dir=str(cache), local_files_only=True)
    assert type(processor) is OriginalLlavaProcessor and processor.chat_template == TEMPLATES[mode]
    assert processor.image_token_id == OLD_VOCAB
    assert processor.legacy is (model_type == "llava_mistral")  # the mistral path reads the fast tokenizer


def test_saved_processor_is_the_llava_hf_one(tmp_path, v15):
    _, folder, cache = v15
    processor = AutoProcessor.from_pretrained(folder, cache_dir=str(cache), local_files_only=True)
    processor.save_pretrained(tmp_path / "saved")
    reloaded = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert type(reloaded) is LlavaProcessor and reloaded.image_processor.do_pad
    assert reloaded.chat_template == processor.chat_template
