"""`llavakit batch --model MODEL --input PATH --output results.jsonl`: answer a whole dataset, resumably.

The input is a folder of images (or videos), a JSONL / CSV / Parquet table (image paths or URLs, optional
video, id and prompt columns) or a LLaVA-format JSON. Videos (video models only) are sampled to --num-frames. Each row becomes one JSON line in the output, written as soon as
its batch finishes; rerunning with the same output skips the rows already there. --ray runs the same
job on Ray Data (`--ray local`, `--ray auto`, `--ray ray://head:10001`, or bare `--ray` for RAY_ADDRESS).
"""

from __future__ import annotations

import argparse

from llavakit.cli.common import add_model_argument, model_path, read_template


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="answer a prompt for every row of a dataset, resumably",
                       description="Answer every row of a dataset (folder, JSONL, CSV, Parquet or LLaVA JSON) with "
                                   "greedy decoding, appending JSON lines that a rerun resumes from.")
    add_model_argument(p, positional=True)
    p.add_argument("--input", required=True,
                   help="folder of images or videos, .jsonl / .csv / .parquet (columns: image and/or video, "
                        "optional id and prompt) or a LLaVA-format .json")
    p.add_argument("--output", required=True, help="results .jsonl (appended to; a rerun skips rows already there)")
    p.add_argument("--prompt", default=None,
                   help="prompt for rows without their own (default: 'What is in the image?')")
    p.add_argument("--chat-template", default=None, help="a built-in template name or a .jinja file")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens per answer")
    p.add_argument("--batch-size", type=int, default=8, help="rows per generate call (per replica on Ray)")
    p.add_argument("--image-folder", default=None,
                   help="folder that relative image paths start from (default: the input file's folder)")
    p.add_argument("--num-frames", type=int, default=8,
                   help="frames sampled evenly from each video (video models: OneVision, NeXT-Video)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: 'local' starts a local instance, 'auto' or ray://HOST:PORT joins a "
                        "cluster; without ADDRESS Ray's default (RAY_ADDRESS) is used")
    p.add_argument("--num-replicas", type=int, default=1, help="Ray actors, each holding one model")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs each Ray actor reserves")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="CPUs each Ray actor reserves")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="split the model over N processes (GPUs, or CPU with gloo); rank 0 writes the results")
    p.add_argument("--json-schema", default=None, metavar="FILE",
                   help="a JSON schema file: every answer is decoded to match it and also written parsed, as "
                        "\"json\" (needs llguidance: pip install 'llavakit[structured]')")
    p.add_argument("--no-progress", action="store_true", help="do not print the progress line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llavakit.batch.job import run_job

    schema = _read_schema(args.json_schema) if args.json_schema else None
    tp = args.tensor_parallel_size
    if tp != 1:
        from llavakit.distributed.launch import start_ranks

        if args.ray is not None:
            raise ValueError("--ray and --tensor-parallel-size exclude each other: on Ray, scale with --num-replicas")
        exit_code = start_ranks(args.argv, tp, args.device)
        if exit_code is not None:
            return exit_code
    template = read_template(args.chat_template)
    summary = run_job(
        model_path(args), args.input, args.output, prompt=args.prompt, chat_template=template,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, image_folder=args.image_folder,
        dtype=args.dtype, device=args.device, use_ray=args.ray is not None, ray_address=args.ray or None,
        num_replicas=args.num_replicas, gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica, progress=not args.no_progress, tensor_parallel=tp > 1,
        json_schema=schema, num_frames=args.num_frames)
    return 0 if summary.written == 0 or summary.errors < summary.written else 1


def _read_schema(path: str) -> dict:
    """The --json-schema file as a dict, with a one-line error for a missing or malformed file."""
    import json
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"--json-schema: no such file: {path}")
    try:
        schema = json.loads(Path(path).read_text())
    except ValueError as err:
        raise ValueError(f"--json-schema {path} is not valid JSON: {err}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"--json-schema {path} must hold a JSON object (a schema), got {type(schema).__name__}")
    return schema
