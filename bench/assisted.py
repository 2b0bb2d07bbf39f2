"""Assisted decoding speed: plain greedy vs prompt lookup vs an assistant model, on the small random LLaVA-1.5.

    python bench/assisted.py [--runs 3] [--new-tokens 64] [--device cpu|cuda]

All three must return the same tokens (checked). The assistant here is the main model itself, so every draft
is accepted: it shows the most the verification scheme can save in forwards, not a real small-model speed-up
(a real assistant is cheaper per token but accepted less often). Random weights make greedy output loop, which
prompt lookup drafts well; on real answers that quote less of the context, acceptance is lower.
Plain greedy uses the default eager StaticCache path (compiled only on CUDA); assisted paths use a DynamicCache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generate import build_checkpoint  # noqa: E402


def timed(model, inputs, device: str, **options) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(**inputs, do_sample=False, prefix_cache=False, **options)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    import transformers
    from PIL import Image

    import llavakit
    from tests.assets import photos_dir

    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp))
        processor = transformers.AutoProcessor.from_pretrained(path)
        model = llavakit.LlavaForConditionalGeneration.from_pretrained(path, device_map=args.device)
        text = "USER: <image>\nDescribe the picture in detail. ASSISTANT:"
        inputs = processor(images=Image.open(photos_dir() / "chelsea.png"), text=text, return_tensors="pt")
        inputs = inputs.to(args.device)
        n = args.new_tokens
        modes = {"greedy": {}, "prompt lookup (10)": dict(prompt_lookup_num_tokens=10),
                 "assistant = itself (5)": dict(assistant_model=model, num_assistant_tokens=5)}
        times: dict[str, list[float]] = {name: [] for name in modes}
        reference = None
        for _ in range(args.runs + 1):  # the first round warms up
            for name, options in modes.items():
                seconds, out = timed(model, inputs, args.device, max_new_tokens=n, min_new_tokens=n, **options)
                reference = out if reference is None else reference
                assert torch.equal(out, reference), f"{name} changed the tokens"
                times[name].append(seconds)
        base = statistics.median(times["greedy"][1:])
        print(f"device={args.device} new_tokens={n} runs={args.runs} (median s, speed-up vs greedy)")
        for name, values in times.items():
            median = statistics.median(values[1:])
            print(f"  {name:24s} {median:7.3f} s   x{base / median:.2f}")


if __name__ == "__main__":
    main()
