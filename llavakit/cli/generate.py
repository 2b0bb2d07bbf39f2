"""`llavakit generate`: images and/or videos and a prompt in, the model's answer streamed out.

The prompt is wrapped in the model's chat template, as a user of the model's chat would see it.
Without --model it runs the built-in demo checkpoint (see llavakit/demo.py), which needs no download.
"""

from __future__ import annotations

import argparse
import os
import threading

from llavakit.cli.common import add_model_argument, is_demo, read_template
from llavakit.cli.common import model_path as model_path_of

DEFAULT_NUM_FRAMES = 8  # the llava-hf video model cards sample 8 frames per clip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="answer a prompt about images or videos",
                       description="Answer a prompt about one or more images or videos with a LLaVA model.")
    add_model_argument(p)
    p.add_argument("--image", action="append", default=[],
                   help="image file or http(s) URL; repeat for several images (default with the demo: its example)")
    p.add_argument("--video", action="append", default=[],
                   help="video file or http(s) URL (LLaVA-OneVision, LLaVA-NeXT-Video); repeat for several videos")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--num-frames", type=int, default=None,
                        help=f"frames sampled uniformly from each video (default: {DEFAULT_NUM_FRAMES}, "
                             "or all of a shorter video)")
    frames.add_argument("--fps", type=float, default=None, help="sample this many frames per second of video")
    p.add_argument("--prompt", default=None,
                   help="the question or instruction (default: 'What is in the image?' or '... the video?')")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: keep the likeliest tokens up to this mass")
    p.add_argument("--top-k", type=int, default=50, help="sampling: keep only the k likeliest tokens")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1.0 means no penalty")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    # decoding options beyond greedy/top-k/top-p (transformers' generate options of the same names)
    p.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (beam sampling with --temperature)")
    p.add_argument("--num-return-sequences", type=int, default=1,
                   help="answers to print (needs --num-beams >= it, or sampling)")
    p.add_argument("--length-penalty", type=float, default=None, help="beam search: score / length ** this")
    p.add_argument("--early-stopping", default=None, choices=["true", "false", "never"],
                   help="beam search: when to stop once beams finish")
    p.add_argument("--min-p", type=float, default=None, help="sampling: drop tokens below min_p * best probability")
    p.add_argument("--typical-p", type=float, default=None, help="sampling: locally typical mass")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, help="never repeat an n-gram of this size")
    p.add_argument("--max-time", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--prompt-lookup-num-tokens", type=int, default=None,
                   help="greedy assisted decoding: draft this many tokens copied from the prompt")
    p.add_argument("--assistant-model", default=None,
                   help="greedy assisted decoding: a smaller checkpoint with the same tokenizer drafts tokens")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--quantize", default=None, choices=["int8", "int4", "nf4", "fp4", "bnb-int8"],
                   help="quantize the language model: int8/int4 weight-only (llavakit), nf4/fp4/bnb-int8 (bitsandbytes)")
    p.add_argument("--chat-template", default=None,
                   help="a built-in template name or a .jinja file (default: the checkpoint's own)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--no-stream", action="store_true", help="print the answer once it is complete")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="split the model over N processes (GPUs, or CPU with gloo) with tensor parallelism")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from llavakit import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer
    from llavakit.processing.image import load_image

    tp = args.tensor_parallel_size
    if tp != 1:
        from llavakit.distributed.launch import start_ranks

        exit_code = start_ranks(args.argv, tp, args.device)
        if exit_code is not None:
            return exit_code
    main_rank = int(os.environ.get("RANK", "0")) == 0
    template = read_template(args.chat_template)
    model_path, images, videos = model_path_of(args), list(args.image), list(args.video)
    if is_demo(args) and not images and not videos:
        from llavakit import demo

        images = [demo.EXAMPLE_IMAGE]
    if not images and not videos:
        raise ValueError("give at least one --image FILE_OR_URL or --video FILE_OR_URL")
    _check_frame_options(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    hub = {"revision": args.revision} if args.revision else {}
    placement = {"tp_plan": "auto"} if tp > 1 else {"device_map": device}
    processor = AutoProcessor.from_pretrained(model_path, **hub)
    if videos and getattr(processor, "video_processor", None) is None:
        raise ValueError(f"{model_path} ({type(processor).__name__}) does not take videos; --video needs a "
                         "LLaVA-OneVision or LLaVA-NeXT-Video checkpoint")
    clips = [_load_clip(source, args.num_frames, args.fps) for source in videos]  # bad files fail before loading
    if args.quantize and tp > 1:
        raise ValueError("--quantize does not combine with --tensor-parallel-size yet; use one or the other")
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=args.dtype, **placement, **hub,
                                                        quantization_config=args.quantize)
    if tp > 1:  # every rank must draw the same samples
        from llavakit.distributed.launch import shared_seed

        torch.manual_seed(shared_seed(args.seed))
    elif args.seed is not None:
        torch.manual_seed(args.seed)

    if videos and getattr(model.config, "video_token_index", None) is None:
        raise ValueError(f"{model_path} ({type(model).__name__}) has no video support; --video needs a "
                         "LLaVA-OneVision or LLaVA-NeXT-Video checkpoint")
    prompt = args.prompt or ("What is in the video?" if videos and not images else "What is in the image?")
    content = ([{"type": "image"} for _ in images] + [{"type": "video"} for _ in videos]
               + [{"type": "text", "text": prompt}])
    conversation = [{"role": "user", "content": content}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True,
                                         chat_template=template)
    pil_images = [load_image(source) for source in images]
    media = {"images": pil_images or None}
    if clips:
        media["videos"] = clips
    inputs = processor(**media, text=text, return_tensors="pt").to(model.device, model.dtype)

    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                   repetition_penalty=args.repetition_penalty)
    if args.temperature > 0:
        options.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p)
        if args.typical_p is not None:
            options["typical_p"] = args.typical_p
    options.update(num_beams=args.num_beams, num_return_sequences=args.num_return_sequences)
    for name in ("length_penalty", "no_repeat_ngram_size", "max_time", "prompt_lookup_num_tokens"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.early_stopping is not None:
        options["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, "never")
    if args.assistant_model is not None:
        options["assistant_model"] = AutoModelForImageTextToText.from_pretrained(
            args.assistant_model, dtype=args.dtype, device_map=device)
    several = args.num_beams > 1 or args.num_return_sequences > 1  # printed once done, one answer per line
    if not main_rank:  # the other ranks compute their share of every step and print nothing
        _check_ranks_agree(model.generate(**inputs, **options), tp)
        return 0
    if args.no_stream or several:
        output = model.generate(**inputs, **options)
        _check_ranks_agree(output, tp)
        for i, row in enumerate(output):
            answer = processor.decode(row[inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            print(f"[{i + 1}] {answer}" if output.shape[0] > 1 else answer)
        return 0

    streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    errors: list[BaseException] = []
    outputs: list = []

    def work() -> None:
        try:
            outputs.append(model.generate(**inputs, **options, streamer=streamer))
        except BaseException as err:  # surfaced below, after the stream closes
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    started = False
    for chunk in streamer:
        if not started:
            chunk, started = chunk.lstrip(), True
        print(chunk, end="", flush=True)
    thread.join()
    print()
    if errors:
        raise errors[0]
    _check_ranks_agree(outputs[0], tp)
    return 0


def _check_frame_options(args: argparse.Namespace) -> None:
    """--num-frames / --fps: only with --video, and positive."""
    if (args.num_frames is not None or args.fps is not None) and not args.video:
        raise ValueError("--num-frames and --fps sample frames from a --video; give a --video FILE_OR_URL")
    if args.num_frames is not None and args.num_frames < 1:
        raise ValueError(f"--num-frames must be at least 1, got {args.num_frames}")
    if args.fps is not None and not args.fps > 0:
        raise ValueError(f"--fps must be positive, got {args.fps}")


def _load_clip(source: str, num_frames: int | None, fps: float | None):
    """One video's sampled (T, H, W, 3) uint8 frames; by default DEFAULT_NUM_FRAMES (all of a shorter clip)."""
    from llavakit.processing.video import load_video, sample_indices

    if num_frames is None and fps is None:
        def default(metadata):
            return sample_indices(metadata.total_num_frames, min(DEFAULT_NUM_FRAMES, metadata.total_num_frames))

        frames, _ = load_video(source, sample_indices_fn=default)
    else:
        frames, _ = load_video(source, num_frames=num_frames, fps=fps)
    return frames


def _check_ranks_agree(output, tp: int) -> None:
    if tp > 1:
        from llavakit.distributed.launch import check_ranks_agree

        check_ranks_agree(output)


_read_template = read_template  # the older name, for code that imports it from here
