"""Original LLaVA / ViP-LLaVA checkpoints (liuhaotian / mucai layout) load into the same model as transformers'.

The originals are written here from tiny random transformers models by inverting the converter's renames,
so the loaded model must give transformers' logits exactly (after the `<image>`/`<pad>`/padding rows of
the grown embeddings are set to the mean that llavakit documents).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from llavakit import AutoModelForImageTextToText, LlavaForConditionalGeneration, VipLlavaForConditionalGeneration
from llavakit.loading import original
from llavakit.loading.load import CheckpointMismatchError
from tests import assets

OLD_VOCAB, IMAGE, PAD = 32000, 32000, 32001
VIP_VISION_LAYERS = 10
TOWER_REPO = "test-org/tiny-clip"

# in-memory transformers names -> original names (the converter's renames, inverted)
LLAVA_INVERSE = [("model.language_model.", "model."), ("lm_head.", "lm_head."),
                 ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
                 ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
                 ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model.")]
VIP_INVERSE = [("model.multi_modal_projector.linear_1.", "model.mm_projector.final_linear.0."),
               ("model.multi_modal_projector.linear_2.", "model.mm_projector.final_linear.2."),
               ("model.multi_modal_projector.projector_layernorm.", "model.mm_projector.clip_layernorm.")
               ] + LLAVA_INVERSE


def tiny_reference(kind: str = "llava", seed: int = 0):
    """A tiny random transformers model whose rows past the original vocab hold the embedding mean."""
    torch.manual_seed(seed)
    text = dict(assets.TINY_TEXT, model_type="llama")
    if kind == "vip":
        config = transformers.VipLlavaConfig(vision_config=dict(assets.TINY_VISION, num_hidden_layers=VIP_VISION_LAYERS),
                                             text_config=text, image_token_index=IMAGE, pad_token_id=PAD)
        model = transformers.VipLlavaForConditionalGeneration(config)
    else:
        config = transformers.LlavaConfig(vision_config=dict(assets.TINY_VISION), text_config=text,
                                          image_token_index=IMAGE, pad_token_id=PAD)
        model = transformers.LlavaForConditionalGeneration(config)
    assets.perturb_(model, seed)
    fill_new_rows_(model)
    return model.eval()


def fill_new_rows_(model, old_vocab: int = OLD_VOCAB) -> None:
    """Set the embedding / head rows past the original vocabulary to the mean llavakit gives them."""
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        mean = embed[:old_vocab].mean(dim=0)
        embed[old_vocab:] = mean
        model.lm_head.weight[old_vocab:] = mean


def original_config(kind: str, tower: str) -> dict:
    """config.json as the original repos write it: llama keys at the top level plus mm_* keys."""
    text = {k: v for k, v in assets.TINY_TEXT.items() if k != "vocab_size"}
    data = dict(text, architectures=["LlavaLlamaForCausalLM"], model_type="llava", vocab_size=OLD_VOCAB,
                hidden_act="silu", pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
                image_aspect_ratio="pad", mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                mm_vision_select_feature="patch", mm_vision_tower=tower, mm_use_im_start_end=False,
                mm_use_im_patch_token=False, mm_hidden_size=assets.TINY_VISION["hidden_size"], use_mm_proj=True,
                rope_scaling=None, _name_or_path="./checkpoints/vicuna-7b-v1.5")
    if kind == "vip":
        data.update(mm_vision_tower="clip_4layers_336", mm_hidden_size=assets.TINY_VISION["hidden_size"] * 5)
    return data


def original_state(model, kind: str = "llava", with_tower: bool = True,
                   old_vocab: int = OLD_VOCAB) -> dict[str, torch.Tensor]:
    rules = VIP_INVERSE if kind == "vip" else LLAVA_INVERSE
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("model.vision_tower.") and not with_tower:
            continue
        for old, new in rules:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        if key in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:old_vocab]  # the original vocabulary has no <image> / <pad>
        state[key] = value.clone().contiguous()
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # stale buffer old checkpoints carry
    return state


def write_original(out: Path, model, kind: str = "llava", *, with_tower: bool = True,
                   tower: str = TOWER_REPO) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file(original_state(model, kind, with_tower), out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(original_config(kind, tower), indent=2))
    return out


def write_tower(out: Path, model) -> Path:
    """The model's CLIP tower as a separate transformers CLIPVisionModel folder."""
    tower = transformers.CLIPVisionModel(model.config.vision_config)
    state = {k.removeprefix("model.vision_tower."): v for k, v in model.state_dict().items()
             if k.startswith("model.vision_tower.")}
    tower.load_state_dict(state)
    tower.save_pretrained(out)
    return out


def fake_hub_cache(root: Path, tower_dir: Path, repo: str = TOWER_REPO) -> Path:
    """A Hugging Face cache holding `repo` (config.json + weights), read with local_files_only=True."""
    commit = "0" * 40
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((tower_dir / name).read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return root


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[1, 319, 1781] + [IMAGE] * assets.IMAGE_TOKENS + [29871, 13, 1724, 338, 445, 29973]])
    pixels = torch.randn(1, 3, 28, 28, generator=gen)
    return ids, pixels


def assert_same_logits(hf, ours):
    ids, pixels = inputs()
    with torch.no_grad():
        expected = hf(input_ids=ids, pixel_values=pixels).logits
        got = ours(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def reference():
    return tiny_reference("llava")


@pytest.fixture(scope="module")
def tower_dir(tmp_path_factory, reference):
    return write_tower(tmp_path_factory.mktemp("tiny-clip"), reference)


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory, reference):
    """Original layout with the CLIP weights inside (model.vision_tower.vision_tower.vision_model.*)."""
    return write_original(tmp_path_factory.mktemp("llava-original"), reference)


@pytest.fixture(scope="module")
def original_no_tower_dir(tmp_path_factory, reference):
    """Original layout as published (liuhaotian/llava-v1.5-7b): no CLIP weights, the tower named by repo id."""
    return write_original(tmp_path_factory.mktemp("llava-original-no-tower"), reference, with_tower=False)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tower_dir):
    return fake_hub_cache(tmp_path_factory.mktemp("hf-cache"), tower_dir)


# ---- detection and config ---------------------------------------------------------------------
def test_detects_original_configs_only(original_dir, tiny_llava_dir):
    assert original.is_original_config(json.loads((original_dir / "config.json").read_text()))
    assert original.is_original_config({"model_type": "llava_mistral"})
    assert original.is_original_config({"architectures": ["LlavaMistralForCausalLM"]})
    assert not original.is_original_config(json.loads((tiny_llava_dir / "config.json").read_text()))


def test_config_follows_the_converter(original_dir, tower_dir):
    model = LlavaForConditionalGeneration.from_pretrained(original_dir, vision_tower=tower_dir)
    config = model.config
    assert config.image_token_index == IMAGE and config.pad_token_id == PAD
    assert config.text_config.vocab_size == 32064  # 32000 + <image> + <pad>, padded to a multiple of 64
    assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
    assert config.text_config.hidden_size == assets.TINY_TEXT["hidden_size"]
    assert config.text_config.rms_norm_eps == assets.TINY_TEXT["rms_norm_eps"]
    assert config.vision_config.image_size == 28 and config.vision_config.patch_size == 7
    assert original.padded_vocab(128256) == 128320 and original.padded_vocab(32000) == 32064


def test_new_embedding_rows_are_the_mean_of_the_old_rows(original_dir, tower_dir):
    model = LlavaForConditionalGeneration.from_pretrained(original_dir, vision_tower=tower_dir)
    embed = model.get_input_embeddings().weight
    expected = embed[:OLD_VOCAB].mean(dim=0)
    torch.testing.assert_close(embed[OLD_VOCAB:], expected.expand(64, -1))
    torch.testing.assert_close(model.get_output_embeddings().weight[OLD_VOCAB:], expected.expand(64, -1))


# ---- round trips ------------------------------------------------------------------------------
def test_embedded_tower_with_explicit_tower_config(reference, original_dir, tower_dir):
    ours = LlavaForConditionalGeneration.from_pretrained(original_dir, vision_tower=tower_dir)
    assert_same_logits(reference, ours)


def test_embedded_tower_config_from_the_hub_repo_id(reference, original_dir, hub_cache):
    ours = LlavaForConditionalGeneration.from_pretrained(original_dir, cache_dir=str(hub_cache),
                                                         local_files_only=True)
    assert_same_logits(reference, ours)


def test_tower_weights_from_the_hub_repo_id(reference, original_no_tower_dir, hub_cache):
    ours = AutoModelForImageTextToText.from_pretrained(original_no_tower_dir, cache_dir=str(hub_cache),
                                                       local_files_only=True)
    assert type(ours) is LlavaForConditionalGeneration
    assert_same_logits(reference, ours)


def test_tower_weights_from_an_explicit_folder(reference, original_no_tower_dir, tower_dir):
    ours = LlavaForConditionalGeneration.from_pretrained(original_no_tower_dir, vision_tower=tower_dir,
                                                         dtype="float32")
    assert_same_logits(reference, ours)
    ids, pixels = inputs()
    ref_out = reference.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
    our_out = ours.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)
    assert our_out.tolist() == ref_out.tolist()


def test_vip_original_round_trip(tmp_path):
    reference = tiny_reference("vip", seed=3)
    folder = write_original(tmp_path / "vip-original", reference, "vip")
    tower = write_tower(tmp_path / "tower", reference)
    ours = VipLlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower)
    assert ours.config.vision_feature_layers == [-2, -5, -8, -11, 6]
    assert_same_logits(reference, ours)
    auto = AutoModelForImageTextToText.from_pretrained(folder, vision_tower=tower)
    assert type(auto) is VipLlavaForConditionalGeneration
    with pytest.raises(ValueError, match="VipLlavaForConditionalGeneration"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower)


# ---- errors -----------------------------------------------------------------------------------
def _edited_copy(src: Path, dst: Path, **changes) -> Path:
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    data = json.loads((src / "config.json").read_text())
    data.update(changes)
    (dst / "config.json").write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("projector", ["linear", "mlp3x_gelu", "identity"])
def test_unknown_projector_type(tmp_path, original_dir, tower_dir, projector):
    folder = _edited_copy(original_dir, tmp_path / "x", mm_projector_type=projector)
    with pytest.raises(ValueError, match=f"mm_projector_type={projector!r}.*mlp2x_gelu"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)


def test_missing_vision_tower(tmp_path, original_no_tower_dir, hub_cache):
    folder = _edited_copy(original_no_tower_dir, tmp_path / "no-name", mm_vision_tower=None)
    with pytest.raises(ValueError, match="names no vision tower.*vision_tower="):
        LlavaForConditionalGeneration.from_pretrained(folder)
    # a local path inside config.json is never followed, even when it exists
    folder = _edited_copy(original_no_tower_dir, tmp_path / "local-path", mm_vision_tower=str(tmp_path / "no-name"))
    with pytest.raises(ValueError, match="does not read local paths.*vision_tower=PATH"):
        LlavaForConditionalGeneration.from_pretrained(folder)
    # a repo id that is not in the (offline) cache
    folder = _edited_copy(original_no_tower_dir, tmp_path / "absent", mm_vision_tower="test-org/absent-clip")
    with pytest.raises(FileNotFoundError, match="absent-clip"):
        LlavaForConditionalGeneration.from_pretrained(folder, cache_dir=str(hub_cache), local_files_only=True)


def test_unknown_keys(tmp_path, reference, tower_dir):
    folder = write_original(tmp_path / "unknown", reference)
    state = original_state(reference)
    state["model.mm_projector.4.weight"] = torch.zeros(2, 2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ValueError, match="unknown tensor 'model.mm_projector.4.weight'"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)
    state = original_state(reference)
    del state["model.norm.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint: language_model.model.norm.weight"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)


def test_unsupported_options(tmp_path, original_dir, tower_dir):
    folder = _edited_copy(original_dir, tmp_path / "start-end", mm_use_im_start_end=True)
    with pytest.raises(ValueError, match="mm_use_im_start_end"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)
    folder = _edited_copy(original_dir, tmp_path / "feature", mm_vision_select_feature="cls")
    with pytest.raises(ValueError, match="mm_vision_select_feature='cls'"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)
    folder = _edited_copy(original_dir, tmp_path / "hidden", mm_hidden_size=1024)
    with pytest.raises(ValueError, match="mm_hidden_size=1024.*32"):
        LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)


def test_cls_patch_selects_the_full_strategy(tmp_path, original_dir, tower_dir):
    folder = _edited_copy(original_dir, tmp_path / "cls", mm_vision_select_feature="cls_patch")
    model = LlavaForConditionalGeneration.from_pretrained(folder, vision_tower=tower_dir)
    assert model.config.vision_feature_select_strategy == "full"


# ---- LoRA folders (liuhaotian/llava-v1.5-7b-lora style) ----------------------------------------------
def test_merge_lora_is_w_plus_scaled_b_a():
    gen = torch.Generator().manual_seed(0)
    w, a, b = (torch.randn(6, 5, generator=gen), torch.randn(2, 5, generator=gen), torch.randn(6, 2, generator=gen))
    adapter = {"model.layers.0.mlp.up_proj.lora_A.weight": a, "model.layers.0.mlp.up_proj.lora_B.weight": b}
    scale = original.lora_scale({"r": 2, "lora_alpha": 8})
    assert scale == 4.0 and original.lora_scale({"r": 4, "lora_alpha": 8, "use_rslora": True}) == 4.0
    merged = dict(original.merge_lora(iter([("model.layers.0.mlp.up_proj.weight", w), ("other", w)]), adapter, scale))
    torch.testing.assert_close(merged["model.layers.0.mlp.up_proj.weight"], w + b @ a * 4.0)
    torch.testing.assert_close(merged["other"], w)
    with pytest.raises(ValueError, match="targets weights the base model does not have"):
        list(original.merge_lora(iter([("other", w)]), adapter, scale))
    with pytest.raises(ValueError, match="positive int r"):
        original.lora_scale({"r": 0, "lora_alpha": 8})


def write_lora(root: Path, reference, base_dir: Path | None = None) -> tuple[Path, Path]:
    """(base folder, -lora folder) as liuhaotian/llava-v1.5-7b-lora with its vicuna base: base LLM (W - delta),
    LoRA pairs (B @ A * scale = delta) and non_lora_trainables.bin (the projector); merged, they are `reference`."""
    r, alpha, scale = 2, 4, 2.0
    full = original_state(reference, with_tower=False)
    gen = torch.Generator().manual_seed(1)
    base, adapter = {}, {}
    for key, value in full.items():
        if key.startswith("model.mm_projector."):
            continue
        if key.endswith(("q_proj.weight", "down_proj.weight")):
            a = torch.randn(r, value.shape[1], generator=gen) * 0.1
            b = torch.randn(value.shape[0], r, generator=gen) * 0.1
            module = "base_model.model." + key.removesuffix(".weight")
            adapter[module + ".lora_A.weight"], adapter[module + ".lora_B.weight"] = a, b
            value = value - b @ a * scale
        base[key] = value.contiguous()
    base_dir = base_dir or root / "vicuna"
    base_dir.mkdir(parents=True, exist_ok=True)
    save_file(base, base_dir / "model.safetensors")
    lora_dir = root / "llava-v1.5-7b-lora"
    lora_dir.mkdir()
    (lora_dir / "config.json").write_text(json.dumps(original_config("llava", TOWER_REPO)))
    (lora_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "base_model_name_or_path": "./checkpoints/vicuna"}))
    save_file(adapter, lora_dir / "adapter_model.safetensors")
    torch.save({"base_model.model." + k: v for k, v in full.items() if k.startswith("model.mm_projector.")},
               lora_dir / "non_lora_trainables.bin")
    return base_dir, lora_dir


def test_lora_folder_merges_adapter_and_trainables(tmp_path, reference, tower_dir):
    """base LLM (W - delta) + LoRA (B @ A * scale = delta) + non_lora_trainables (projector) == the reference."""
    base_dir, lora_dir = write_lora(tmp_path, reference)
    with pytest.raises(ValueError, match="use_safetensors=False"):
        LlavaForConditionalGeneration.from_pretrained(lora_dir, vision_tower=tower_dir, model_base=base_dir)
    with pytest.raises(ValueError, match="does not read local paths"):  # base path from adapter_config.json
        LlavaForConditionalGeneration.from_pretrained(lora_dir, vision_tower=tower_dir, use_safetensors=False)
    ours = LlavaForConditionalGeneration.from_pretrained(lora_dir, vision_tower=tower_dir, model_base=base_dir,
                                                         use_safetensors=False)
    assert_same_logits(reference, ours)


@pytest.mark.parametrize("model_type", ["llava_llama", "llava_mistral"])
def test_auto_class_reads_original_model_types(reference, original_dir, hub_cache, tmp_path, model_type):
    """Original repos also say model_type "llava_llama" / "llava_mistral", which no llava-hf config uses."""
    folder = _edited_copy(original_dir, tmp_path / model_type, model_type=model_type)
    ours = AutoModelForImageTextToText.from_pretrained(folder, cache_dir=str(hub_cache), local_files_only=True)
    assert type(ours) is LlavaForConditionalGeneration
    if model_type == "llava_llama":
        assert_same_logits(reference, ours)
