"""What every subcommand shares: naming the model, reading --chat-template, checking a port.

Kept free of torch imports so `llavakit --help` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import os
import sys

DEMO = "demo"
MODEL_HELP = "checkpoint folder, Hub repo id, or 'demo' for the built-in demo model (default: demo)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, and keeps the description's line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in text.splitlines())

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS, []):
            return text  # already says it, or there is nothing worth showing
        return text + " (default: %(default)s)"


def add_model_argument(p: argparse.ArgumentParser, positional: bool = False) -> None:
    """--model MODEL on every command; `positional` also keeps the older `llavakit CMD MODEL` form working."""
    p.add_argument("--model", default=None, help=MODEL_HELP)
    if positional:
        p.add_argument("model_positional", nargs="?", default=None, metavar="MODEL",
                       help="the same as --model (the older form)")


def model_path(args: argparse.Namespace) -> str:
    """The checkpoint the user named (--model or the positional MODEL), the demo model's folder when none."""
    flag, positional = args.model, getattr(args, "model_positional", None)
    if flag is not None and positional is not None and flag != positional:
        raise ValueError(f"the model is named twice ({positional!r} and --model {flag!r}); give it once")
    name = flag if flag is not None else positional
    if name is None or name == DEMO:
        from llavakit import demo

        if not demo.has_trained_model() and int(os.environ.get("RANK", "0")) == 0:
            print(demo.NOTICE, file=sys.stderr)
        return demo.demo_checkpoint()
    check_not_adapter(name)
    return name


def is_demo(args: argparse.Namespace) -> bool:
    return (args.model or getattr(args, "model_positional", None) or DEMO) == DEMO


def check_not_adapter(path: str) -> None:
    """A LoRA adapter folder (from `llavakit train --stage lora`) is not a model: say how to make one."""
    adapter, config = (os.path.isfile(os.path.join(path, name)) for name in ("adapter_config.json", "config.json"))
    if adapter and not config:
        raise ValueError(f"{path} is a LoRA adapter, not a full model: merge it into its base model first with "
                         f"`llavakit merge {path} MERGED`, then pass --model MERGED")


def read_template(name_or_file: str | None) -> str | None:
    """--chat-template: a template file's text, a built-in template's name, or None for the checkpoint's own."""
    if name_or_file is None:
        return None
    from llavakit.processing.templates import TEMPLATES

    if name_or_file in TEMPLATES:
        return TEMPLATES[name_or_file]
    if os.path.isfile(name_or_file):
        with open(name_or_file, encoding="utf-8") as f:
            return f.read()
    if name_or_file.endswith((".jinja", ".j2", ".txt")):
        raise FileNotFoundError(f"chat template file {name_or_file} does not exist")
    if "{%" in name_or_file or "{{" in name_or_file:
        return name_or_file  # template text given inline
    raise ValueError(f"unknown chat template {name_or_file!r}: give a .jinja file or one of the built-in names "
                     f"{', '.join(sorted(TEMPLATES))}")


def bind_port(host: str, port: int) -> "socket.socket":
    """A TCP socket bound to host:port (uvicorn listens on it later), or a one-line error: port out of range,
    port taken, address not on this machine."""
    import socket

    if not 1 <= port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except (OSError, UnicodeError) as err:  # taken, not this machine's address, or not a host name
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}") from None
    return sock


def check_port(host: str, port: int) -> None:
    """bind_port's checks, releasing the port again (for a process that does not serve itself)."""
    bind_port(host, port).close()
