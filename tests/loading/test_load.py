"""from_pretrained / save_pretrained: every layout loads to the same tensors, bad checkpoints fail clearly."""

import json
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from llavakit import LlamaForCausalLM, LlavaForConditionalGeneration, LlavaModel
from llavakit.loading.hub import CheckpointNotFoundError
from llavakit.loading.load import CheckpointMismatchError


@pytest.fixture(scope="module")
def reference_state(tiny_llava_dir):
    """The tensors transformers itself loads, keyed by the Hub layout our modules use."""
    model = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    ours = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    assert set(ours.state_dict()) == {
        k if not k.startswith("vision_tower.") else "vision_tower.vision_model." + k[len("vision_tower."):]
        for k in load_file(tiny_llava_dir / "model.safetensors")
    }
    theirs = model.state_dict()
    return {
        "language_model.lm_head.weight": theirs["lm_head.weight"],
        "language_model.model.norm.weight": theirs["model.language_model.norm.weight"],
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight":
            theirs["model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"],
        "multi_modal_projector.linear_1.bias": theirs["model.multi_modal_projector.linear_1.bias"],
    }


def _copy_with_keys(src, dst, rename):
    """A copy of a single-file checkpoint folder whose tensor names went through `rename`."""
    shutil.copytree(src, dst)
    tensors = load_file(src / "model.safetensors")
    save_file({rename(k): v for k, v in tensors.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _assert_matches(model, reference_state):
    state = model.state_dict()
    for key, value in reference_state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_transformers5_layout(tiny_llava_dir, reference_state):
    _assert_matches(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir), reference_state)


def test_hub_layout_sharded_sparse_config(tiny_llava_hub_dir, reference_state):
    assert len(list(tiny_llava_hub_dir.glob("model-*.safetensors"))) > 1
    _assert_matches(LlavaForConditionalGeneration.from_pretrained(tiny_llava_hub_dir), reference_state)


def test_transformers_4_52_in_memory_names(tiny_llava_dir, tmp_path, reference_state):
    def rename(key):
        if key.startswith("language_model.model."):
            return "model.language_model." + key[len("language_model.model."):]
        if key.startswith("language_model.lm_head."):
            return key[len("language_model."):]
        return "model." + key

    folder = _copy_with_keys(tiny_llava_dir, tmp_path / "new-names", rename)
    _assert_matches(LlavaForConditionalGeneration.from_pretrained(folder), reference_state)


def test_base_model_and_decoder_alone(tiny_llava_hub_dir, reference_state):
    base = LlavaModel.from_pretrained(tiny_llava_hub_dir)
    torch.testing.assert_close(base.state_dict()["language_model.norm.weight"],
                               reference_state["language_model.model.norm.weight"])
    assert not any("lm_head" in k for k in base.state_dict())


def test_dtype_options(tiny_llava_dir):
    assert LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).dtype == torch.float32  # "auto": config
    for kwargs in ({"dtype": torch.bfloat16}, {"torch_dtype": "bfloat16"}, {"dtype": "torch.bfloat16"}):
        model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, **kwargs)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="unknown dtype"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype="float13")


def test_auto_dtype_follows_the_checkpoint(tiny_llava_dir, tmp_path):
    folder = tmp_path / "half"
    shutil.copytree(tiny_llava_dir, folder)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v.half() for k, v in tensors.items()}, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["dtype"] = "float16"
    (folder / "config.json").write_text(json.dumps(config))
    assert LlavaForConditionalGeneration.from_pretrained(folder).dtype == torch.float16
    assert LlavaForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).dtype == torch.float32


def test_config_overrides_and_typos(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, vision_feature_layer=-1)
    assert model.config.vision_feature_layer == -1
    with pytest.raises(TypeError, match="unexpected arguments \\['vison_feature_layer'\\]"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, vison_feature_layer=-1)


def test_missing_unexpected_and_misshaped_tensors_are_named(tiny_llava_dir, tmp_path):
    tensors = load_file(tiny_llava_dir / "model.safetensors")
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != "multi_modal_projector.linear_2.bias"},
                    "missing from the checkpoint: multi_modal_projector.linear_2.bias"),
        "unexpected": ({**tensors, "multi_modal_projector.linear_3.weight": torch.zeros(2)},
                       "unexpected in the checkpoint: multi_modal_projector.linear_3.weight"),
        "shape": ({**tensors, "multi_modal_projector.linear_2.bias": torch.zeros(65)},
                  r"multi_modal_projector.linear_2.bias: checkpoint \(65,\) vs model \(64,\)"),
    }
    for name, (state, message) in cases.items():
        folder = tmp_path / name
        shutil.copytree(tiny_llava_dir, folder)
        save_file(state, folder / "model.safetensors")
        with pytest.raises(CheckpointMismatchError, match=message):
            LlavaForConditionalGeneration.from_pretrained(folder)


def test_pickle_weights_need_an_explicit_opt_in(tiny_llava_dir, tmp_path, reference_state):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_llava_dir, folder)
    (folder / "model.safetensors").unlink()
    torch.save(load_file(tiny_llava_dir / "model.safetensors"), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointNotFoundError, match="use_safetensors=False"):
        LlavaForConditionalGeneration.from_pretrained(folder)
    _assert_matches(LlavaForConditionalGeneration.from_pretrained(folder, use_safetensors=False), reference_state)


def test_no_weights_at_all(tiny_llava_dir, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(tiny_llava_dir / "config.json", folder)
    with pytest.raises(CheckpointNotFoundError, match="no model.safetensors"):
        LlavaForConditionalGeneration.from_pretrained(folder)
    with pytest.raises(CheckpointNotFoundError, match="neither an existing folder"):
        LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "does" / "not" / "exist"))


def test_wrong_class_for_the_checkpoint(tiny_llava_dir):
    with pytest.raises(ValueError, match="LlamaForCausalLM cannot load a 'llava' checkpoint"):
        LlamaForCausalLM.from_pretrained(tiny_llava_dir)


def test_hub_kernel_options_are_accepted_and_change_nothing(tiny_llava_dir):
    """transformers 5.25 turns Hub kernels on by default (use_kernels); llavakit runs its own kernels."""
    plain = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    kernels = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, use_kernels=True, kernels_mode="inference",
                                                            kernel_config=None)
    off = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, use_kernels=False)
    for model in (kernels, off):
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
        assert "use_kernels" not in model.config.to_dict()


def test_unsupported_options_say_so(tiny_llava_dir):
    if not torch.cuda.is_available():  # flash_attention_2 is supported, given flash-attn and a GPU
        with pytest.raises(ImportError, match="flash_attention_2 needs the flash-attn package and a CUDA GPU"):
            LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, use_flash_attention_2=True)
    with pytest.raises(ValueError, match="load_in_4bit and load_in_8bit are both True"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, quantization_config={"load_in_4bit": True,
                                                                                           "load_in_8bit": True})
    with pytest.raises(ValueError, match="names no module"):
        LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, device_map={"a": "cpu", "b": "meta"})


def test_tied_embeddings(tiny_llava_dir, tmp_path):
    folder = tmp_path / "tied"
    shutil.copytree(tiny_llava_dir, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["language_model.lm_head.weight"]
    save_file(tensors, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    model = LlavaForConditionalGeneration.from_pretrained(folder)
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.save_pretrained(tmp_path / "tied-saved")
    assert "language_model.lm_head.weight" not in load_file(tmp_path / "tied-saved" / "model.safetensors")
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(folder)
    torch.testing.assert_close(theirs.lm_head.weight, model.get_output_embeddings().weight)


def test_save_writes_the_hub_layout_and_transformers_reads_it(tiny_llava_dir, tmp_path, reference_state):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    model.save_pretrained(tmp_path / "saved", max_shard_size="200KB")
    index = json.loads((tmp_path / "saved" / "model.safetensors.index.json").read_text())
    keys = set(index["weight_map"])
    assert "vision_tower.vision_model.post_layernorm.weight" in keys
    assert "language_model.model.embed_tokens.weight" in keys and "language_model.lm_head.weight" in keys
    assert len(set(index["weight_map"].values())) > 1
    _assert_matches(LlavaForConditionalGeneration.from_pretrained(tmp_path / "saved"), reference_state)

    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(theirs.lm_head.weight, reference_state["language_model.lm_head.weight"])
    # a second save into the same folder as one file leaves no stale shards behind
    model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").glob("model*")) == ["model.safetensors"]


def test_device_map_cpu_and_missing_cuda(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, device_map="cpu")
    assert model.device.type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, device_map="cuda")
