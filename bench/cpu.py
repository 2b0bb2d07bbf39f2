"""CPU benchmarks on a random LLaVA-Interleave-0.5B-sized checkpoint: transformers vs llavakit, one scenario
per command.

    python bench/cpu.py --scenario ttft|decode|second-turn|preprocess [--runs 3] [--threads 2]
                        [--new-tokens 32] [--cache DIR]

The checkpoint has the dimensions of llava-hf/llava-interleave-qwen-0.5b-hf (SigLIP-so400m/384 with 26
layers, 729 image tokens, "full" strategy, layer -1; Qwen1.5-0.5B decoder, 24 layers, hidden 1024, vocab
152000, tied embeddings), random weights, fp32. transformers builds and saves it once under --cache (the
Mistral test tokenizer stands in for Qwen's, so <image> is id 32000). Both libraries load the same files
and get the same inputs (the skimage astronaut photo); runs alternate between them so that load drift hits
both, and medians and ratios (transformers / llavakit, > 1 means llavakit is faster) are printed.

Scenarios:
  ttft         time to first token of a one-image prompt (vision tower + prefill), greedy token checked equal
  decode       decode tokens/s after the first token, from per-token timestamps (a streamer), tokens checked equal
  second-turn  time to first token of turn 2 (turn 1 + answer + follow-up, same image) right after turn 1;
               llavakit reuses turn 1's KV prefix and image features (its prefix cache)
  preprocess   image processing time of the interleave (SigLIP), LLaVA-1.5 (CLIP 336, with and without pad)
               and LLaVA-NeXT (anyres 336) processors, pixel_values checked equal
Needs the test extras (transformers, scikit-image, mistral-common).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefix_reuse import timed  # noqa: E402  (bench/prefix_reuse.py)

# llava-hf/llava-interleave-qwen-0.5b-hf's config.json, with a random init instead of its weights.
VISION = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
              num_attention_heads=16, image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh",
              layer_norm_eps=1e-6, vision_use_head=False)
TEXT = dict(model_type="qwen2", vocab_size=152000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=24,
            num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=32768, rope_theta=1e6,
            rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)
IMAGE_TOKEN = 32000  # <image> in the test tokenizer (151646 in Qwen's)
PROMPT = "USER: <image>\nDescribe the image in detail. ASSISTANT:"
FOLLOW_UP = " USER: What else can you see in the picture? ASSISTANT:"
DEFAULT_CACHE = Path.home() / ".cache" / "llavakit" / "bench" / "interleave-qwen-0.5b-random"


def build_checkpoint(folder: Path) -> Path:
    """Random interleave-0.5B-sized LLaVA + LlavaProcessor(SiglipImageProcessor 384), saved by transformers once."""
    if (folder / "config.json").exists() and (folder / "processor_config.json").exists():
        return folder
    import tempfile

    import transformers

    from tests.assets import LLAVA_15_TEMPLATE, build_mistral_tokenizer

    print(f"building the random checkpoint in {folder} (once) ...", flush=True)
    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=IMAGE_TOKEN,
                                      pad_token_id=32001, vision_feature_select_strategy="full",
                                      vision_feature_layer=-1, tie_word_embeddings=True)
    model = transformers.LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = transformers.AutoTokenizer.from_pretrained(build_mistral_tokenizer(Path(tmp)))
    processor = transformers.LlavaProcessor(
        image_processor=transformers.SiglipImageProcessorPil(size={"height": 384, "width": 384}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full", num_additional_image_tokens=0,
        chat_template=LLAVA_15_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


def astronaut():
    from PIL import Image

    from tests.assets import photos_dir

    image = Image.open(photos_dir() / "astronaut.png")
    image.load()
    return image


def report(title: str, values: dict[str, list[float]], unit: str = "ms", scale: float = 1000.0) -> None:
    """Medians per contestant and transformers' median / each median."""
    base = statistics.median(values["transformers"])
    print(title)
    for name, samples in values.items():
        median = statistics.median(samples)
        print(f"  {name:24s} median {median * scale:10.2f} {unit}  ({base / median:5.2f}x)   "
              f"samples: {', '.join(f'{s * scale:.1f}' for s in samples)}")


def alternate(contestants: dict[str, Callable[[], object]], runs: int) -> tuple[dict[str, list[float]], dict]:
    """One warm-up call each, then `runs` rounds calling each contestant in turn; seconds and last outputs."""
    times: dict[str, list[float]] = {name: [] for name in contestants}
    outputs = {name: fn() for name, fn in contestants.items()}
    for _ in range(runs):
        for name, fn in contestants.items():
            seconds, outputs[name] = timed(fn, "cpu")
            times[name].append(seconds)
    return times, outputs


# ---- model scenarios --------------------------------------------------------------------------------
def load_models(path: Path):
    import transformers

    import llavakit

    transformers.logging.set_verbosity_error()
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    ours = llavakit.LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    processor = llavakit.AutoProcessor.from_pretrained(path)
    inputs = dict(processor(images=astronaut(), text=PROMPT, return_tensors="pt"))
    their_inputs = transformers.AutoProcessor.from_pretrained(path)(images=astronaut(), text=PROMPT,
                                                                   return_tensors="pt")
    same = all(torch.equal(inputs[k], their_inputs[k]) for k in ("input_ids", "pixel_values"))
    inputs.pop("attention_mask", None)
    return theirs, ours, processor, inputs, same


class TokenClock:
    """A streamer that timestamps every put(): the prompt first, then one put per generated token."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def scenario_ttft(path: Path, runs: int) -> None:
    theirs, ours, _, inputs, same = load_models(path)
    greedy = dict(max_new_tokens=1, do_sample=False)
    times, outputs = alternate({
        "transformers": lambda: theirs.generate(**inputs, **greedy),
        "llavakit": lambda: ours.generate(**inputs, **greedy, prefix_cache=False),
    }, runs)
    print(f"prompt={inputs['input_ids'].shape[1]} tokens (729 image tokens), same_inputs={same}, "
          f"identical_first_token={torch.equal(outputs['transformers'], outputs['llavakit'])}")
    report("time to first token (one image, cold: no prefix cache)", times)


def scenario_decode(path: Path, runs: int, new_tokens: int) -> None:
    theirs, ours, _, inputs, same = load_models(path)
    greedy = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    rates: dict[str, list[float]] = {"transformers": [], "llavakit": []}
    ttft: dict[str, list[float]] = {"transformers": [], "llavakit": []}
    outputs = {}
    contestants = {"transformers": (theirs, {}), "llavakit": (ours, {"prefix_cache": False})}
    for round_ in range(runs + 1):  # round 0 is the warm-up
        for name, (model, options) in contestants.items():
            clock = TokenClock()
            start = time.perf_counter()
            with torch.inference_mode():
                outputs[name] = model.generate(**inputs, **greedy, **options, streamer=clock)
            if round_:
                stamps = clock.stamps[1:]  # one per new token
                ttft[name].append(stamps[0] - start)
                rates[name].append((stamps[-1] - stamps[0]) / (len(stamps) - 1))  # seconds per token
    same_tokens = torch.equal(outputs["transformers"], outputs["llavakit"])
    print(f"prompt={inputs['input_ids'].shape[1]} tokens, new={new_tokens}, same_inputs={same}, "
          f"identical_greedy_tokens={same_tokens}")
    report("decode time per token after the first", rates)
    for name, values in rates.items():
        print(f"  {name:24s} {1 / statistics.median(values):8.2f} tokens/s")
    report("time to first token (same calls)", ttft)


def scenario_second_turn(path: Path, runs: int, new_tokens: int) -> None:
    from prefix_reuse import chat

    theirs, ours, processor, inputs, same = load_models(path)
    follow = processor.tokenizer(FOLLOW_UP, add_special_tokens=False, return_tensors="pt")["input_ids"]
    contestants = {
        "transformers": (theirs, {}),
        "llavakit caches off": (ours, {"prefix_cache": False}),
        "llavakit caches on": (ours, {"prefix_cache": True}),
    }
    ttft: dict[str, list[float]] = {name: [] for name in contestants}
    outputs = {}
    for round_ in range(runs + 1):  # round 0 is the warm-up
        for name, (model, options) in contestants.items():
            if model is ours:
                ours.prefix_cache.clear()
            _, t2, outputs[name] = chat(model, inputs, follow, new_tokens, 1, "cpu", **options)
            if round_:
                ttft[name].append(t2)
    same_tokens = all(torch.equal(outputs["transformers"], out) for out in outputs.values())
    turn_2 = outputs["transformers"].shape[1] - 1
    print(f"turn 1 prompt={inputs['input_ids'].shape[1]} tokens + {new_tokens} answer tokens, turn 2 prompt="
          f"{turn_2} tokens, same_inputs={same}, identical_turn_2_tokens={same_tokens}")
    report("turn-2 time to first token (same image, right after turn 1)", ttft)


# ---- preprocessing -----------------------------------------------------------------------------------
def processor_pairs(folder: Path) -> dict[str, tuple[object, object]]:
    """(transformers AutoImageProcessor, llavakit AutoImageProcessor) loaded from the same saved configs."""
    import transformers

    from llavakit.processing.auto import AutoImageProcessor

    configs = {
        "interleave SigLIP 384": transformers.SiglipImageProcessorPil(size={"height": 384, "width": 384}),
        "LLaVA-1.5 CLIP 336": transformers.CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=336),
        "LLaVA-1.5 CLIP 336 pad": transformers.LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size=336,
                                                                      do_pad=True),
        "LLaVA-NeXT anyres 336": transformers.LlavaNextImageProcessorPil(size={"shortest_edge": 336},
                                                                         crop_size=336),
    }
    pairs = {}
    for i, (name, processor) in enumerate(configs.items()):
        processor.save_pretrained(folder / str(i))
        pairs[name] = (transformers.AutoImageProcessor.from_pretrained(folder / str(i)),
                       AutoImageProcessor.from_pretrained(folder / str(i)))
    return pairs


def scenario_preprocess(runs: int) -> None:
    import tempfile

    from PIL import Image

    from tests.assets import photos_dir

    images = {"astronaut 512x512": astronaut(), "chelsea 451x300": Image.open(photos_dir() / "chelsea.png")}
    with tempfile.TemporaryDirectory() as tmp:
        pairs = processor_pairs(Path(tmp))
    for image_name, image in images.items():
        image.load()
        for name, (theirs, ours) in pairs.items():
            times, outputs = alternate({
                "transformers": lambda p=theirs: p(image, return_tensors="pt")["pixel_values"],
                "llavakit": lambda p=ours: p(image, return_tensors="pt")["pixel_values"],
            }, runs)
            same = torch.equal(outputs["transformers"], outputs["llavakit"])
            report(f"{name} on {image_name}: transformers {type(theirs).__name__}, "
                   f"pixel_values {tuple(outputs['llavakit'].shape)}, identical={same}", times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", required=True, choices=["ttft", "decode", "second-turn", "preprocess"])
    parser.add_argument("--runs", type=int, default=None, help="timed rounds (default 3; 50 for preprocess)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the random checkpoint is kept")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads={torch.get_num_threads()}, "
          f"scenario={args.scenario}")
    if args.scenario == "preprocess":
        scenario_preprocess(args.runs or 50)
        return
    path = build_checkpoint(args.cache)
    config = json.loads((path / "config.json").read_text())
    print(f"checkpoint: {path} (vision {config['vision_config']['num_hidden_layers']} layers, text "
          f"{config['text_config']['num_hidden_layers']} x {config['text_config']['hidden_size']}, fp32, random)")
    runs = args.runs or 3
    if args.scenario == "ttft":
        scenario_ttft(path, runs)
    elif args.scenario == "decode":
        scenario_decode(path, runs, args.new_tokens)
    else:
        scenario_second_turn(path, runs, args.new_tokens)


if __name__ == "__main__":
    main()
