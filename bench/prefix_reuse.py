"""Side-by-side second-turn speed: transformers vs llavakit with its prefix caches off and on, for a 2-turn
chat about one image on the random LLaVA-1.5 checkpoint of bench/generate.py.

    python bench/prefix_reuse.py [--runs 5] [--new-tokens 16] [--device cpu|cuda] [--dtype float32|bfloat16]
                                 [--threads N]

Turn 2 is turn 1's prompt and answer plus a follow-up question, with the same image, as a chat client
sends it. Each run clears llavakit's caches, then times (a) time to first token of turn 2 right after
turn 1, and (b) both turns with --new-tokens each. The three contestants alternate within each run;
medians and ratios are reported, and the greedy tokens of turn 2 are checked to be identical.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generate import build_checkpoint  # noqa: E402  (bench/generate.py)

FOLLOW_UP = " USER: What else can you see in the picture? ASSISTANT:"


def timed(fn, device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def chat(model, inputs: dict, follow: torch.Tensor, new_tokens: int, second_tokens: int, device: str,
         **options) -> tuple[float, float, torch.Tensor]:
    """Turn 1 then turn 2 (same image); returns (turn 1 seconds, turn 2 seconds, turn 2 output)."""
    opts = dict(do_sample=False, **options)
    t1, first = timed(lambda: model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                             **opts), device)
    turn_2 = dict(input_ids=torch.cat([first, follow], dim=1), pixel_values=inputs["pixel_values"])
    t2, second = timed(lambda: model.generate(**turn_2, max_new_tokens=second_tokens, min_new_tokens=second_tokens,
                                              **opts), device)
    return t1, t2, second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    from PIL import Image

    import llavakit
    from tests.assets import photos_dir

    dtype, device, n = getattr(torch, args.dtype), args.device, args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp))
        image = Image.open(photos_dir() / "chelsea.png")
        prompt = "USER: <image>\nDescribe the image in detail. ASSISTANT:"
        theirs = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
        ours = llavakit.LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, device_map=device)
        processor = llavakit.AutoProcessor.from_pretrained(path)
        inputs = {k: v.to(device) for k, v in processor(images=image, text=prompt, return_tensors="pt").items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        inputs.pop("attention_mask")
        follow = processor.tokenizer(FOLLOW_UP, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)

    contestants = {
        "transformers": (theirs, {}),
        "llavakit caches off": (ours, {"prefix_cache": False}),
        "llavakit caches on": (ours, {"prefix_cache": True}),
    }
    ttft = {name: [] for name in contestants}
    total = {name: [] for name in contestants}
    outputs = {}
    for model, options in contestants.values():  # warm-up
        chat(model, inputs, follow, 2, 1, device, **options)
    for _ in range(args.runs):
        for name, (model, options) in contestants.items():
            if model is ours:
                ours.prefix_cache.clear()
            ttft[name].append(chat(model, inputs, follow, n, 1, device, **options)[1])
            if model is ours:
                ours.prefix_cache.clear()
            t1, t2, outputs[name] = chat(model, inputs, follow, n, n, device, **options)
            total[name].append(t1 + t2)

    turn_2_len = outputs["transformers"].shape[1] - n
    same = all(torch.equal(outputs["transformers"].cpu(), out.cpu()) for out in outputs.values())
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} turn 1 prompt="
          f"{inputs['input_ids'].shape[1]} tokens, turn 2 prompt={turn_2_len} tokens, new={n} per turn, "
          f"runs={args.runs}, identical_greedy_tokens={same}")
    base_ttft, base_total = statistics.median(ttft["transformers"]), statistics.median(total["transformers"])
    for name in contestants:
        a, b = statistics.median(ttft[name]), statistics.median(total[name])
        print(f"  {name:20s} turn-2 time to first token {a * 1000:8.1f} ms ({base_ttft / a:5.2f}x)   "
              f"2-turn total {b * 1000:8.1f} ms ({base_total / b:5.2f}x)")
    print("  (ratios: transformers' median / this median; > 1 is faster than transformers)")


if __name__ == "__main__":
    main()
