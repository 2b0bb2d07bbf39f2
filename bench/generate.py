"""Side-by-side generation speed: transformers vs llavakit on the same random LLaVA-1.5 checkpoint.

    python bench/generate.py [--runs 5] [--new-tokens 32] [--device cpu|cuda] [--dtype float32|bfloat16]

Both libraries load the same files and get the same processed inputs (a real photo, one prompt). Runs
alternate between the two, so drift in machine load hits both; medians and the ratio are reported,
and the greedy tokens are checked to be identical. Needs the test extras (transformers, scikit-image).
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

# A small but not tiny model: CLIP 224/14 (256 image tokens) and an 8-layer, 512-wide Llama.
VISION = dict(model_type="clip_vision_model", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
              num_attention_heads=4, image_size=224, patch_size=14, projection_dim=64)
TEXT = dict(model_type="llama", vocab_size=32064, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5)


def build_checkpoint(folder: Path) -> Path:
    import transformers

    from tests.assets import LLAVA_15_TEMPLATE, build_mistral_tokenizer, perturb_

    tokenizer_dir = build_mistral_tokenizer(folder / "tok")
    torch.manual_seed(0)
    config = transformers.LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=32000,
                                      pad_token_id=32001)
    model = transformers.LlavaForConditionalGeneration(config)
    perturb_(model)
    out = folder / "model"
    model.save_pretrained(out)
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessor(size={"shortest_edge": 224},
                                                        crop_size={"height": 224, "width": 224}),
        tokenizer=transformers.AutoTokenizer.from_pretrained(tokenizer_dir), patch_size=14,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_15_TEMPLATE)
    processor.save_pretrained(out)
    return out


def time_generate(model, inputs, new_tokens: int, device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    import transformers
    from PIL import Image

    import llavakit
    from tests.assets import photos_dir

    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_checkpoint(Path(tmp))
        image = Image.open(photos_dir() / "chelsea.png")
        prompt = "USER: <image>\nDescribe the image in detail. ASSISTANT:"

        theirs = transformers.LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype).to(args.device)
        ours = llavakit.LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, device_map=args.device)
        their_inputs = transformers.AutoProcessor.from_pretrained(path)(images=image, text=prompt,
                                                                       return_tensors="pt")
        our_inputs = llavakit.AutoProcessor.from_pretrained(path)(images=image, text=prompt, return_tensors="pt")
        their_inputs = their_inputs.to(args.device).to(dtype)
        our_inputs = our_inputs.to(args.device).to(dtype)

        times: dict[str, list[float]] = {"transformers": [], "llavakit": []}
        outputs = {}
        for name, model, inputs in (("transformers", theirs, their_inputs), ("llavakit", ours, our_inputs)):
            time_generate(model, inputs, 4, args.device)  # warm-up
        for _ in range(args.runs):
            for name, model, inputs in (("transformers", theirs, their_inputs), ("llavakit", ours, our_inputs)):
                seconds, outputs[name] = time_generate(model, inputs, args.new_tokens, args.device)
                times[name].append(seconds)

    same = torch.equal(outputs["transformers"].cpu(), outputs["llavakit"].cpu())
    prompt_len = our_inputs["input_ids"].shape[1]
    print(f"device={args.device} dtype={args.dtype} prompt={prompt_len} tokens new={args.new_tokens} "
          f"runs={args.runs} identical_greedy_tokens={same}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:12s} median {median * 1000:8.1f} ms  ({args.new_tokens / median:6.1f} new tokens/s)")
    ratio = statistics.median(times["transformers"]) / statistics.median(times["llavakit"])
    print(f"  llavakit speed-up over transformers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
