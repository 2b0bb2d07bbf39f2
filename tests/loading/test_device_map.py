"""device_map: planning (which unit goes where), key spellings, errors, and split models on GPUs (skipped without)."""

import pytest
import torch
from torch import nn

from llavakit import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
from llavakit.loading import device_map as dm
from tests.parity import assert_close, image_prompt, left_pad, random_pixels

GPU0, GPU1, CPU = torch.device("cuda", 0), torch.device("cuda", 1), torch.device("cpu")
GiB = 2**30


def _inputs(n_prompts: int = 2):
    ids, mask, _ = left_pad([image_prompt(1, seed=i) for i in range(n_prompts)])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": random_pixels(n_prompts)}


def test_sequential_fills_each_device_before_the_next():
    sizes = [(f"layer.{i}", 10) for i in range(6)]
    plan = dm.plan_units(sizes, [(GPU0, 25), (GPU1, 25), (CPU, float("inf"))], "sequential")
    assert [plan[f"layer.{i}"] for i in range(6)] == [GPU0, GPU0, GPU1, GPU1, CPU, CPU]


def test_balanced_spreads_evenly_and_never_splits_a_unit():
    sizes = [("embed", 4), *[(f"layer.{i}", 10) for i in range(4)], ("head", 4)]  # 48 bytes in all
    plan = dm.plan_units(sizes, [(GPU0, 1000), (GPU1, 1000), (CPU, float("inf"))], "balanced")
    on = {d: sum(s for n, s in sizes if plan[n] == d) for d in (GPU0, GPU1, CPU)}
    assert on[CPU] == 0 and on[GPU0] > 0 and on[GPU1] > 0
    assert abs(on[GPU0] - on[GPU1]) <= 10  # at most one unit apart
    order = [plan[n] for n, _ in sizes]
    assert order == sorted(order, key=lambda d: (d.type == "cpu", d.index or 0))  # contiguous, in order


def test_balanced_spills_to_cpu_only_what_the_gpus_cannot_hold():
    sizes = [(f"layer.{i}", 10) for i in range(5)]
    plan = dm.plan_units(sizes, [(GPU0, 20), (GPU1, 15), (CPU, float("inf"))], "balanced")
    assert sum(plan[n] == CPU for n, _ in sizes) == 2  # 2 + 1 layers fit on the GPUs
    with pytest.raises(ValueError, match="offloading to disk is not supported"):
        dm.plan_units(sizes, [(GPU0, 20), (CPU, 15)], "sequential")


def test_parse_size():
    assert dm.parse_size("10GiB") == 10 * GiB
    assert dm.parse_size("500MB") == 500e6
    assert dm.parse_size("2.5 GB") == 2.5e9
    assert dm.parse_size(1234) == 1234
    with pytest.raises(ValueError, match="not a size"):
        dm.parse_size("lots")


def test_units_and_sizes_of_a_llava(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    units = dm.model_units(model)
    for name in ("vision_tower.vision_model.embeddings", "vision_tower.vision_model.pre_layrnorm",
                 "vision_tower.vision_model.encoder.layers.2", "multi_modal_projector",
                 "language_model.model.embed_tokens", "language_model.model.layers.1", "language_model.model.norm",
                 "language_model.lm_head"):
        assert name in units
    assert units.index("multi_modal_projector") < units.index("language_model.model.layers.0")
    sizes = dm.unit_sizes(model, units, torch.bfloat16)
    assert sum(sizes.values()) == 2 * model.num_parameters()
    assert sizes["language_model.model.embed_tokens"] == 2 * 32064 * 64


def test_max_memory_is_honoured_when_planning(tiny_llava_dir):
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir).config)
    with pytest.raises(ValueError, match="needs 0.0.* GiB but the devices offer cpu: 0.00 GiB"):
        dm.plan(model, "auto", max_memory={"cpu": "100KB"})
    with pytest.raises(ValueError, match="not visible"):
        dm.plan(model, "auto", max_memory={7: "1GiB", "cpu": "1GiB"})
    with pytest.raises(ValueError, match="max_memory applies to"):
        dm.plan(model, "cpu", max_memory={"cpu": "1GiB"})
    if not torch.cuda.is_available():
        placement = dm.plan(model, "auto", max_memory={"cpu": "1GiB"})
        assert placement.single == CPU


def test_auto_on_this_machine_and_hf_device_map(tiny_llava_dir):
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, device_map="auto")
    expected = 0 if torch.cuda.is_available() else "cpu"
    assert model.hf_device_map == {"": expected}
    assert not hasattr(LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir), "hf_device_map")


def test_explicit_map_in_both_spellings_gives_the_same_logits(tiny_llava_dir):
    reference = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir)
    v4 = {"vision_tower": "cpu", "multi_modal_projector": torch.device("cpu"),
          "language_model.model.embed_tokens": "cpu", "language_model.model.layers.0": "cpu",
          "language_model.model.layers.1": "cpu", "language_model.model.norm": "cpu", "language_model.lm_head": "cpu"}
    v5 = {"model.vision_tower": "cpu", "model.multi_modal_projector": "cpu", "model.language_model": "cpu",
          "lm_head": "cpu"}
    inputs = _inputs()
    with torch.no_grad():
        expected = reference(**inputs).logits
        for device_map in (v4, v5):
            model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, device_map=device_map)
            assert model.hf_device_map["language_model.model.layers.1"] == "cpu"
            assert_close(model(**inputs).logits, expected, atol=0)


def test_dispatch_hooks_keep_logits_and_greedy_tokens(tiny_llava_next_dir):
    """The hooks themselves (moving every unit's args, including tuples, masks and the cache) on one device."""
    reference = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir)
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_llava_next_dir)
    units = dm.model_units(model)
    assert "image_newline" in units
    calls = []
    dm.dispatch(model, dm.Placement(dict.fromkeys(units, CPU), None))
    model.language_model.model.layers[0].register_forward_pre_hook(lambda m, a: calls.append(len(a)))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=0)
    assert calls == [5]  # x, cos_sin, mask, cache, eager reached the layer through the hook
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, reference.generate(input_ids=ids, max_new_tokens=5, do_sample=False))


def test_bad_maps_say_what_is_wrong(tiny_llava_dir):
    load = LlavaForConditionalGeneration.from_pretrained
    with pytest.raises(ValueError, match="no disk offload"):
        load(tiny_llava_dir, device_map={"vision_tower": "cpu", "multi_modal_projector": "disk",
                                         "language_model": "cpu"})
    with pytest.raises(ValueError, match="names no module"):
        load(tiny_llava_dir, device_map={"visual_tower": "cpu"})
    with pytest.raises(ValueError, match="splits 'language_model.model.layers.0'"):
        load(tiny_llava_dir, device_map={"": "cpu", "language_model.model.layers.0.mlp": "cpu"})
    with pytest.raises(ValueError, match="gives no device for \\['language_model.model.embed_tokens'"):
        load(tiny_llava_dir, device_map={"vision_tower": "cpu", "multi_modal_projector": "cpu"})
    with pytest.raises(ValueError, match="balanced_low_0"):
        load(tiny_llava_dir, device_map="balanced_low_0")
    if torch.cuda.device_count() < 4:
        with pytest.raises(ValueError, match="GPU|no CUDA device"):
            load(tiny_llava_dir, device_map={"": "cuda:3"})


def test_tied_head_follows_the_embeddings():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.body, self.head = nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.head

    model = Tiny()
    assert dm.model_units(model) == ["embed", "body", "head"]
    moved = dm._keep_tied_together(model, {"embed": GPU0, "body": GPU1, "head": GPU1})
    assert moved["head"] == GPU0
    with pytest.raises(ValueError, match="tied"):
        dm._keep_tied_together(model, {"embed": GPU0, "body": GPU1, "head": GPU1}, strict=True)


def _two_devices() -> list:
    if torch.cuda.device_count() >= 2:
        return [0, 1]
    if torch.cuda.is_available():
        return [0, "cpu"]
    return []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["explicit", "sequential"])
def test_split_over_devices_matches_one_device(tiny_llava_dir, strategy):
    first, second = _two_devices()
    if strategy == "explicit":
        device_map = {"model.vision_tower": first, "model.multi_modal_projector": first,
                      "model.language_model.embed_tokens": first, "model.language_model.layers.0": first,
                      "model.language_model.layers.1": second, "model.language_model.norm": second, "lm_head": second}
        kwargs = {"device_map": device_map}
    else:
        budget = {first: "300KB", second: "100GiB"} if second != "cpu" else {first: "300KB", "cpu": "10GiB"}
        kwargs = {"device_map": "sequential", "max_memory": budget}
    model = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, **kwargs)
    assert len(set(model.hf_device_map.values())) == 2
    reference = LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, device_map=0)
    inputs = _inputs()
    with torch.no_grad():
        expected = reference(**{k: v.cuda() for k, v in inputs.items()}).logits
        assert_close(model(**inputs).logits.to(expected.device), expected, atol=1e-4)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(out.cpu(), reference.generate(**{k: v.cuda() for k, v in inputs.items()},
                                                     max_new_tokens=6, do_sample=False).cpu())
