"""`llavakit serve --model MODEL`: the OpenAI-compatible HTTP server (chat, completions, models, health, metrics)
with continuous batching, plus a chat page at /. Needs the `serve` extra (fastapi, uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys

from llavakit.cli.common import DEMO, add_model_argument, bind_port, check_port, model_path, read_template


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a LLaVA model over an OpenAI-compatible HTTP API with a web chat page.")
    add_model_argument(p, positional=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--served-model-name", default=None, help="the id clients send as 'model' (default: MODEL)")
    p.add_argument("--max-batch-size", type=int, default=8, help="requests decoded together")
    p.add_argument("--max-model-len", type=int, default=None, help="prompt + output tokens per request")
    p.add_argument("--max-images", type=int, default=8, help="images per request")
    p.add_argument("--allowed-local-media-path", default=None, help="folder file:// image URLs may read from")
    p.add_argument("--api-key", default=os.environ.get("LLAVAKIT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $LLAVAKIT_API_KEY)")
    p.add_argument("--chat-template", default=None, help="a built-in template name or a .jinja file")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quantize", default=None, choices=["int8", "int4", "nf4", "fp4", "bnb-int8"],
                   help="quantize the language model: int8/int4 weight-only (llavakit), nf4/fp4/bnb-int8 (bitsandbytes)")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="split the model over N processes (GPUs, or CPU with gloo); rank 0 serves")
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="serve from model replicas on Ray Serve, one endpoint in front: 'local' starts a local "
                        "instance, 'auto' or ray://HOST:PORT joins a cluster (bare --ray: RAY_ADDRESS)")
    p.add_argument("--num-replicas", type=int, default=1, help="with --ray: model replicas, each holding the model")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="with --ray: CPUs each replica reserves")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="with --ray: GPUs each replica reserves")
    p.set_defaults(run=run)


def build_app(args: argparse.Namespace):  # -> fastapi.FastAPI
    """Load the model and processor and wrap them in the server app (the engine starts with the app)."""
    import torch

    from llavakit import AutoModelForImageTextToText, AutoProcessor
    from llavakit.serving.app import create_app
    from llavakit.serving.engine import Engine
    from llavakit.serving.media import MediaLimits

    if args.max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.allowed_local_media_path and not os.path.isdir(args.allowed_local_media_path):
        raise ValueError(f"--allowed-local-media-path {args.allowed_local_media_path} is not a folder")
    template = read_template(args.chat_template)
    path = model_path(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tp = getattr(args, "tensor_parallel_size", 1)
    placement = {"tp_plan": "auto"} if tp > 1 else {"device_map": device}
    processor = AutoProcessor.from_pretrained(path)
    quantize = getattr(args, "quantize", None)
    if quantize and tp > 1:
        raise ValueError("--quantize does not combine with --tensor-parallel-size yet; use one or the other")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=args.dtype, **placement,
                                                        quantization_config=quantize).eval()
    engine_class = Engine
    if tp > 1:  # this is rank 0 (see run): its engine tells the other ranks each step
        from llavakit.distributed.serving import LeaderEngine as engine_class
    engine = engine_class(model, processor, max_batch_size=args.max_batch_size, max_model_len=args.max_model_len)
    limits = MediaLimits(max_images=args.max_images, allowed_local_path=args.allowed_local_media_path)
    return create_app(engine, served_name(args), limits, api_key=args.api_key, chat_template=template,
                      access_log=not getattr(args, "no_access_log", False))


def served_name(args: argparse.Namespace) -> str:
    """The model id clients send: --served-model-name, else the name given on the command line ('demo')."""
    return args.served_model_name or args.model or getattr(args, "model_positional", None) or DEMO


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("llavakit serve needs fastapi and uvicorn: pip install 'llavakit[serve]'", file=sys.stderr)
        return 2
    if getattr(args, "ray", None) is not None:
        return _serve_on_ray(args)
    if args.tensor_parallel_size != 1:
        check_port(args.host, args.port)  # in the launcher too, before it starts the ranks
        follower = _tensor_parallel(args)
        if follower is not None:
            return follower
    sock = bind_port(args.host, args.port)  # before minutes of loading: a taken port fails at once
    app = build_app(args)
    print(f"llavakit: serving {served_name(args)} on http://{args.host}:{args.port} (chat page at /, API at /v1)",
          file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
    return 0


def _tensor_parallel(args: argparse.Namespace) -> int | None:
    """Re-launch under torchrun, or (inside it) run a follower rank to the end; None on rank 0, which serves."""
    from llavakit.distributed.launch import start_ranks
    from llavakit.distributed.setup import init_distributed

    exit_code = start_ranks(args.argv, args.tensor_parallel_size, args.device)
    if exit_code is not None:
        return exit_code
    init_distributed(timeout_s=30 * 24 * 3600)  # followers wait for rank 0 however long the server is idle
    if int(os.environ["RANK"]) == 0:
        return None
    from llavakit import AutoModelForImageTextToText, AutoProcessor
    from llavakit.distributed.serving import FollowerEngine

    path = model_path(args)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=args.dtype, tp_plan="auto").eval()
    FollowerEngine(model, processor, max_batch_size=args.max_batch_size, max_model_len=args.max_model_len).run()
    return 0


def _serve_on_ray(args: argparse.Namespace) -> int:
    """`--ray`: replicas on Ray Serve (see serving/ray_serve.py), each loading the model with these options."""
    try:
        from ray import serve  # noqa: F401
    except ImportError:
        print("llavakit serve --ray needs Ray Serve: pip install 'llavakit[ray-serve]'", file=sys.stderr)
        return 2
    from llavakit.serving.ray_serve import serve_on_ray

    if args.tensor_parallel_size != 1:
        raise ValueError("--ray and --tensor-parallel-size exclude each other: on Ray, scale with --num-replicas")
    options = {k: v for k, v in vars(args).items() if k not in ("run", "argv", "ray")}
    print(f"llavakit: serving {args.served_model_name or args.model} from {args.num_replicas} Ray replicas on "
          f"http://{args.host}:{args.port}", file=sys.stderr)
    serve_on_ray(options, args.ray, args.num_replicas, args.host, args.port, args.cpus_per_replica,
                 args.gpus_per_replica)
    return 0
