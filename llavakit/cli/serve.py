"""`llavakit serve MODEL`: the OpenAI-compatible HTTP server (chat, completions, models, health, metrics)
with continuous batching, plus a chat page at /. Needs the `serve` extra (fastapi, uvicorn)."""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="Serve a LLaVA model over an OpenAI-compatible HTTP API with a web chat page.")
    p.add_argument("model", help="checkpoint folder or Hub repo id")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
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
    p.set_defaults(run=run)


def build_app(args: argparse.Namespace):  # -> fastapi.FastAPI
    """Load the model and processor and wrap them in the server app (the engine starts with the app)."""
    import torch

    from llavakit import AutoModelForImageTextToText, AutoProcessor
    from llavakit.cli.generate import _read_template
    from llavakit.serving.app import create_app
    from llavakit.serving.engine import Engine
    from llavakit.serving.media import MediaLimits

    if args.max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.allowed_local_media_path and not os.path.isdir(args.allowed_local_media_path):
        raise ValueError(f"--allowed-local-media-path {args.allowed_local_media_path} is not a folder")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=args.dtype, device_map=device).eval()
    engine = Engine(model, processor, max_batch_size=args.max_batch_size, max_model_len=args.max_model_len)
    limits = MediaLimits(max_images=args.max_images, allowed_local_path=args.allowed_local_media_path)
    name = args.served_model_name or args.model
    return create_app(engine, name, limits, api_key=args.api_key, chat_template=_read_template(args.chat_template))


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("llavakit serve needs fastapi and uvicorn: pip install 'llavakit[serve]'", file=sys.stderr)
        return 2
    app = build_app(args)
    print(f"llavakit: serving {args.served_model_name or args.model} on http://{args.host}:{args.port}",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
