"""`llavakit merge`: fold a LoRA adapter (saved by `llavakit train --stage lora`) into its base model,
writing a plain llava-hf checkpoint that needs neither peft nor llavakit to load.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base model", description=__doc__)
    p.add_argument("--base", default=None, help="the base checkpoint (default: the adapter's base_model_name_or_path)")
    p.add_argument("--adapter", required=True, help="folder with adapter_config.json + adapter_model.safetensors")
    p.add_argument("--output-dir", required=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llavakit.training.lora import merge_adapter

    merge_adapter(args.adapter, args.output_dir, base=args.base)
    print(f"[llavakit merge] wrote {args.output_dir}")
    return 0
