"""CPU decode speed of quantized llavakit: fp32 vs int8 / int4 weight-only, with transformers fp32 as reference.

    python bench/quantized.py [--runs 5] [--new-tokens 32] [--threads 2] [--with-image]

The checkpoint has llava-interleave-qwen-0.5b's dimensions (SigLIP so400m/384 tower, Qwen2-0.5B decoder,
tied 151936-token head) with random weights, built by transformers in a temp folder (~3.6 GB). Every
contestant decodes the same greedy tokens from the same prompt; runs alternate between contestants so load
drift hits all of them, and a streamer timestamps each token, so the reported rate is decode only (the
prefill and the first token are excluded). Quantized models share the fp32 model's vision tower, projector,
embeddings and head (quantization leaves them untouched) to keep memory down. Random weights have small
top-1/top-2 logit gaps, so quantized greedy tokens drift from fp32 early (a bf16 cast drifts too).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE = 32000
VISION = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False)
TEXT = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
            tie_word_embeddings=True)


def build_checkpoint(folder: Path) -> Path:
    import transformers

    from tests.assets import perturb_

    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE,
                                      pad_token_id=0, vision_feature_select_strategy="full", vision_feature_layer=-1,
                                      tie_word_embeddings=True)
    model = transformers.LlavaForConditionalGeneration(config)
    perturb_(model)
    model.save_pretrained(folder)
    return folder


class StepTimer:
    """A generate() streamer that only records when each token arrives (the first put is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass

    def decode_seconds(self) -> float:
        return self.times[-1] - self.times[2]  # from the first token (after prefill) to the last


def run_once(model, inputs: dict, new_tokens: int) -> tuple[float, torch.Tensor]:
    timer = StepTimer()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             streamer=timer)
    return timer.decode_seconds(), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--with-image", action="store_true", help="prompt with one 384 px image (729 tokens)")
    parser.add_argument("--no-int4", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    import llavakit
    from llavakit.quantization import WeightOnlyConfig, quantize_

    gen = torch.Generator().manual_seed(0)
    ids = [1] + torch.randint(3, 30000, (24,), generator=gen).tolist()
    inputs = {}
    if args.with_image:
        ids += [IMAGE] * 729 + torch.randint(3, 30000, (8,), generator=gen).tolist()
        inputs["pixel_values"] = torch.randn(1, 3, 384, 384, generator=gen)
    inputs["input_ids"] = torch.tensor([ids])
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])

    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp))
        contestants = {"transformers fp32": transformers.LlavaForConditionalGeneration.from_pretrained(
            path, dtype=torch.float32).eval()}
        ours = llavakit.LlavaForConditionalGeneration.from_pretrained(path, dtype="float32")
        contestants["llavakit fp32"] = ours
        configs = {"llavakit int8": WeightOnlyConfig(bits=8)}
        if not args.no_int4:
            configs["llavakit int4 g128"] = WeightOnlyConfig(bits=4, group_size=128)
        for name, config in configs.items():
            model = quantize_(llavakit.LlavaForConditionalGeneration.from_pretrained(path, dtype="float32"), config)
            model.vision_tower, model.multi_modal_projector = ours.vision_tower, ours.multi_modal_projector
            model.language_model.model.embed_tokens = ours.language_model.model.embed_tokens
            model.language_model.lm_head = ours.language_model.lm_head
            contestants[name] = model

        for model in contestants.values():
            run_once(model, inputs, 3)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in contestants}
        outputs: dict[str, torch.Tensor] = {}
        for _ in range(args.runs):
            for name, model in contestants.items():
                seconds, outputs[name] = run_once(model, inputs, args.new_tokens)
                times[name].append(seconds)

    load = os.getloadavg()
    steps = args.new_tokens - 1
    reference = outputs["llavakit fp32"][0, len(ids):]
    print(f"llava-interleave-qwen-0.5b dims, random weights, cpu fp32 activations, threads={args.threads}, "
          f"prompt={len(ids)} tokens, new={args.new_tokens}, runs={args.runs}, load average after={load[0]:.2f}")
    print(f"  transformers fp32 and llavakit fp32 greedy tokens identical: "
          f"{torch.equal(outputs['transformers fp32'], outputs['llavakit fp32'])}")
    base = statistics.median(times["llavakit fp32"])
    for name, values in times.items():
        median = statistics.median(values)
        new = outputs[name][0, len(ids):]
        same = next((i for i in range(len(new)) if new[i] != reference[i]), len(new))  # tokens before divergence
        print(f"  {name:20s} decode median {steps / median:6.2f} tok/s  ({1000 * median / steps:6.1f} ms/token, "
              f"min {1000 * min(values) / steps:6.1f})  x{base / median:4.2f} vs llavakit fp32  "
              f"same greedy prefix as llavakit fp32: {same}/{args.new_tokens}")


if __name__ == "__main__":
    main()
