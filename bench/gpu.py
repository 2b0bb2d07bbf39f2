"""GPU benchmark at 7B scale: transformers vs llavakit on the same random bf16 weights, alternating in one process.

    python bench/gpu.py [--models llava15,next] [--runs 5] [--new-tokens 128] [--batches 8,32,64]
                        [--peak-bw 3.35e12] [--serve] [--no-compile]
    python bench/gpu.py --tiny          # tiny dimensions on the CPU: checks the script end to end

Models: llava-1.5-7b (CLIP-L/336 + Llama-2-7B) and llava-v1.6-mistral-7b (CLIP-L/336 anyres + Mistral-7B)
dimensions, random weights built directly on the device; llavakit's model shares transformers' tensors (no
second copy, nothing written to disk). Scenarios: time to first token (batch 1, one image), decode tokens/s
at batch 1, throughput at each batch size, and with --serve requests/s of concurrent one-image requests
through llavakit's serving engine. Decode rows report their share of the memory-bandwidth floor: the time
reading the weights and the KV cache once per token would take at --peak-bw, over the measured time.
Needs the test extras (transformers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLIP_L_336 = dict(model_type="clip_vision_model", hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
LLAMA2_7B = dict(model_type="llama", vocab_size=32064, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                 rms_norm_eps=1e-5)
MISTRAL_7B = dict(model_type="mistral", vocab_size=32064, hidden_size=4096, intermediate_size=14336,
                  num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                  rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None)
PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

TINY_CLIP = dict(CLIP_L_336, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 image_size=56, patch_size=14, projection_dim=32)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
PINPOINTS_56 = [[56, 112], [112, 56], [112, 112]]


def configs(tiny: bool) -> dict[str, dict]:
    """Model name -> (transformers config class name, config kwargs, image size (height, width) or None)."""
    clip = TINY_CLIP if tiny else CLIP_L_336
    llama = dict(LLAMA2_7B, **TINY_TEXT, num_key_value_heads=4) if tiny else LLAMA2_7B
    mistral = dict(MISTRAL_7B, **TINY_TEXT, num_key_value_heads=2) if tiny else MISTRAL_7B
    side = clip["image_size"]
    common = dict(image_token_index=32000, pad_token_id=32001, vision_feature_layer=-2,
                  vision_feature_select_strategy="default")
    return {
        "llava15": dict(cls="LlavaForConditionalGeneration", config="LlavaConfig", image=None,
                        kwargs=dict(common, vision_config=clip, text_config=llama)),
        "next": dict(cls="LlavaNextForConditionalGeneration", config="LlavaNextConfig", image=(2 * side, 2 * side),
                     kwargs=dict(common, vision_config=clip, text_config=mistral,
                                 image_grid_pinpoints=PINPOINTS_56 if tiny else PINPOINTS_336)),
    }


def build(spec: dict, device: str, dtype: torch.dtype):
    """(transformers model, llavakit model) with shared random weights on `device`."""
    import transformers

    import llavakit
    from llavakit.loading.load import load_tensors

    torch.manual_seed(0)
    config = getattr(transformers, spec["config"])(**spec["kwargs"])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            theirs = getattr(transformers, spec["cls"])(config).eval()
    finally:
        torch.set_default_dtype(default)
    our_class = getattr(llavakit, spec["cls"])
    our_config = our_class.config_class.from_dict(config.to_dict())
    our_config._attn_implementation = "sdpa"
    with torch.device("meta"):
        ours = our_class(our_config)
    load_tensors(ours, theirs.state_dict().items(), dtype=dtype, device=torch.device(device), where="memory")
    ours.eval()
    ours.generation_config = llavakit.GenerationConfig.from_model_config(our_config)
    for model in (ours, theirs):
        model.generation_config.eos_token_id = None  # random weights: always generate the full length
        model.generation_config.pad_token_id = 32001
    return theirs, ours


def make_inputs(spec: dict, ours, batch: int, device: str, dtype: torch.dtype) -> dict:
    """A batch of identical one-image prompts: BOS, text, the image's <image> tokens, text."""
    vision = ours.config.vision_config
    side = vision.image_size
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    if spec["image"] is None:
        pixels = torch.randn(batch, 3, side, side, generator=gen)
        n_image = (side // vision.patch_size) ** 2
    else:
        from llavakit.anyres import image_size_to_num_patches

        crops = image_size_to_num_patches(spec["image"], ours.config.image_grid_pinpoints, side)
        pixels = torch.randn(batch, crops, 3, side, side, generator=gen)
        inputs["image_sizes"] = torch.tensor([spec["image"]] * batch, device=device)
        with torch.no_grad():
            n_image = ours.get_image_features(pixels[:1].to(device, dtype), inputs["image_sizes"][:1])[0].shape[0]
    text = torch.randint(3, 31000, (40,), generator=gen).tolist()
    ids = [1] + text[:5] + [32000] * n_image + text[5:]
    inputs["input_ids"] = torch.tensor([ids] * batch, device=device)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    inputs["pixel_values"] = pixels.to(device, dtype)
    return inputs


def clock_class():
    """A logits processor that records when each step's logits arrive (it syncs the device, as generate's
    stop check already does every step); a transformers LogitsProcessor so both libraries accept it."""
    import transformers

    class Clock(transformers.LogitsProcessor):
        def __init__(self, device: str) -> None:
            self.device, self.stamps = device, []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())
            return scores

    return Clock


def run_generate(model, inputs: dict, new_tokens: int, ours: bool, compile: bool, device: str):
    """(seconds in total, to the first token, per decode step, output ids) of one greedy generate call."""
    clock = clock_class()(device)
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, logits_processor=[clock])
    if ours:
        options.update(prefix_cache=False, compile=compile)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, **options)
    if device == "cuda":
        torch.cuda.synchronize()
    total, stamps = time.perf_counter() - start, clock.stamps
    step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return total, stamps[0] - start, step, out


def alternate(models: dict, inputs: dict, new_tokens: int, runs: int, device: str, compile: bool):
    """Medians per library over `runs` alternating calls (after one warm-up each): {name: (total, ttft, step)},
    and whether both libraries produced the same tokens."""
    times = {name: [] for name in models}
    outputs = {}
    for name, model in models.items():
        run_generate(model, inputs, new_tokens, name == "llavakit", compile, device)  # warm-up / compile
    for _ in range(runs):
        for name, model in models.items():
            *seconds, outputs[name] = run_generate(model, inputs, new_tokens, name == "llavakit", compile, device)
            times[name].append(seconds)
    medians = {name: tuple(statistics.median(column) for column in zip(*values)) for name, values in times.items()}
    return medians, torch.equal(outputs["transformers"].cpu(), outputs["llavakit"].cpu())


def floor_seconds(ours, batch: int, context: int, bytes_per_value: int, peak_bw: float) -> float:
    """Time to read the decoder + LM head weights and `batch` KV caches of `context` positions once."""
    lm = ours.language_model
    weights = sum(p.numel() * p.element_size() for p in lm.parameters())
    weights -= lm.model.embed_tokens.weight.numel() * lm.model.embed_tokens.weight.element_size()  # a gather only
    if lm.lm_head.weight is lm.model.embed_tokens.weight:
        weights += lm.lm_head.weight.numel() * lm.lm_head.weight.element_size()
    text = ours.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv = batch * context * text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * bytes_per_value
    return (weights + kv) / peak_bw


def serve_requests_per_second(ours, spec: dict, n: int, new_tokens: int, device: str, dtype: torch.dtype,
                              tokenizer_dir: Path) -> float:
    """n concurrent one-image requests of `new_tokens` tokens through llavakit's serving engine."""
    import transformers

    from llavakit.serving.engine import Engine, Prompt
    from llavakit.serving.schemas import SamplingParams

    processor = type("Processor", (), {"tokenizer": transformers.AutoTokenizer.from_pretrained(tokenizer_dir)})()
    engine = Engine(ours, processor, max_batch_size=n).start()
    done = threading.Semaphore(0)
    inputs = make_inputs(spec, ours, n, device, dtype)
    try:
        prompts = []
        for i in range(n):
            image = {"digest": f"image-{i}", "pixel_values": inputs["pixel_values"][i:i + 1]}
            if "image_sizes" in inputs:
                image["image_sizes"] = inputs["image_sizes"][i:i + 1]
            prompts.append(Prompt(inputs["input_ids"][i:i + 1].cpu(), [image]))
        start = time.perf_counter()
        for prompt in prompts:
            engine.submit(prompt, SamplingParams(max_tokens=new_tokens, temperature=0.0),
                          lambda event: event.finish_reason is not None and done.release())
        for _ in range(n):
            if not done.acquire(timeout=600):
                raise TimeoutError("the serving engine did not finish the requests in 10 minutes")
        return n / (time.perf_counter() - start)
    finally:
        engine.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions on the CPU (a smoke run)")
    parser.add_argument("--models", default="llava15,next")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="8,32,64")
    parser.add_argument("--peak-bw", type=float, default=3.35e12, help="bytes/s (H100 SXM: 3.35e12, H200: 4.8e12)")
    parser.add_argument("--serve", action="store_true", help="also measure requests/s through the serving engine")
    parser.add_argument("--no-compile", action="store_true", help="llavakit decodes eagerly (no CUDA graphs)")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        args.runs, args.new_tokens = min(args.runs, 2), min(args.new_tokens, 8)
        args.batches = "2,4" if args.batches == "8,32,64" else args.batches
    if args.tiny:
        torch.set_num_threads(1)  # tiny matmuls: threads only add contention
    batches = [int(b) for b in args.batches.split(",") if b]
    compile = not args.no_compile and device == "cuda"
    torch._dynamo.config.recompile_limit = 64  # one compiled decode step per (model, batch size, cache bucket)
    N = args.new_tokens
    rows = []

    for name in args.models.split(","):
        spec = configs(args.tiny)[name]
        theirs, ours = build(spec, device, dtype)
        models = {"transformers": theirs, "llavakit": ours}
        one = make_inputs(spec, ours, 1, device, dtype)
        T = one["input_ids"].shape[1]
        print(f"[{name}] prompt {T} tokens, decoder {sum(p.numel() for p in ours.language_model.parameters()) / 1e9:.2f}B "
              f"params, {dtype}, device {device}, compile={compile}", flush=True)

        first, same = alternate(models, one, 1, args.runs, device, compile)
        rows.append((name, "TTFT ms (batch 1)", {k: v[1] * 1e3 for k, v in first.items()}, None, same))
        full, same = alternate(models, one, N, args.runs, device, compile)
        floor = floor_seconds(ours, 1, T + N // 2, dtype.itemsize, args.peak_bw)
        rows.append((name, f"decode tok/s (batch 1, {N} new)", {k: 1 / v[2] for k, v in full.items()},
                     {k: floor / v[2] for k, v in full.items()}, same))
        for B in batches:
            inputs = make_inputs(spec, ours, B, device, dtype)
            total, same = alternate(models, inputs, N, args.runs, device, compile)
            floor = floor_seconds(ours, B, T + N // 2, dtype.itemsize, args.peak_bw)
            rows.append((name, f"throughput tok/s (batch {B})", {k: B * N / v[0] for k, v in total.items()},
                         {k: floor / v[2] for k, v in total.items()}, same))
            rows.append((name, f"requests/s (batch {B})", {k: B / v[0] for k, v in total.items()}, None, same))
            rows.append((name, f"TTFT ms (batch {B})", {k: v[1] * 1e3 for k, v in total.items()}, None, same))
            del inputs
        if args.serve:
            from tests.assets import build_mistral_tokenizer

            n = max(batches)
            tokenizer_dir = build_mistral_tokenizer(Path(f"/tmp/llavakit-bench-tokenizer-{name}"))
            rps = serve_requests_per_second(ours, spec, n, N, device, dtype, tokenizer_dir)
            rows.append((name, f"serving requests/s ({n} concurrent)", {"llavakit": rps}, None, True))
        del theirs, ours, models
        ours = None
        if device == "cuda":
            torch.cuda.empty_cache()

    print(f"\n{'model':8s} {'scenario':36s} {'transformers':>13s} {'llavakit':>10s} {'ratio':>6s} "
          f"{'BW floor share (hf / ours)':>27s}  same tokens")
    for name, scenario, values, share, same in rows:
        hf, us = values.get("transformers"), values.get("llavakit")
        lower_is_better = scenario.startswith("TTFT")
        ratio = (hf / us if lower_is_better else us / hf) if hf and us else float("nan")
        ratio_text = f"{ratio:5.2f}x" if ratio == ratio else f"{'-':>6s}"
        share_text = f"{share['transformers']:.0%} / {share['llavakit']:.0%}" if share else ""
        hf_text = f"{hf:13.1f}" if hf is not None else f"{'-':>13s}"
        print(f"{name:8s} {scenario:36s} {hf_text} {us:10.1f} {ratio_text} {share_text:>27s}  {same}")
    print("ratio: llavakit's advantage (>1 = llavakit faster); BW floor share: the bandwidth floor's time over the "
          f"measured time per decode step, at peak {args.peak_bw:.3g} B/s")


if __name__ == "__main__":
    main()
