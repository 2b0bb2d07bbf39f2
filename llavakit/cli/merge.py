"""`llavakit merge ADAPTER OUTPUT`: fold a LoRA adapter (saved by `llavakit train --stage lora`) into its base
model, writing a plain llava-hf checkpoint that needs neither peft nor llavakit to load.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model", description=__doc__)
    p.add_argument("adapter_positional", nargs="?", default=None, metavar="ADAPTER",
                   help="folder with adapter_config.json + adapter_model.safetensors (or --adapter)")
    p.add_argument("output_positional", nargs="?", default=None, metavar="OUTPUT",
                   help="folder for the merged model (or --output-dir)")
    p.add_argument("--adapter", default=None, help="the same as ADAPTER")
    p.add_argument("--output-dir", default=None, help="the same as OUTPUT")
    p.add_argument("--base", default=None, help="the base checkpoint (default: the adapter's base_model_name_or_path)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llavakit.training.lora import merge_adapter

    adapter = _one(args.adapter_positional, args.adapter, "ADAPTER", "--adapter")
    output = _one(args.output_positional, args.output_dir, "OUTPUT", "--output-dir")
    merge_adapter(adapter, output, base=args.base)
    print(f"[llavakit merge] wrote {output}")
    return 0


def _one(positional: str | None, flag: str | None, name: str, option: str) -> str:
    """The value given as a positional or as its option, refusing none or two different ones."""
    if positional is not None and flag is not None and positional != flag:
        raise ValueError(f"{name} is given twice ({positional!r} and {option} {flag!r}); give it once")
    if positional is None and flag is None:
        raise ValueError(f"give the {name.lower()} folder: llavakit merge ADAPTER OUTPUT")
    return positional if positional is not None else flag
