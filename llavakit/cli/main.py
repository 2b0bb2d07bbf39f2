"""The `llavakit` command: one subcommand per job, each in its own module, imported only when used."""

from __future__ import annotations

import argparse
import sys

from llavakit.cli import batch, chat, convert, eval_mc, generate, merge, serve, train
from llavakit.cli.common import HelpFormatter

COMMANDS = [generate, chat, serve, batch, eval_mc, train, merge, convert]


def build_parser() -> argparse.ArgumentParser:
    from llavakit import __version__

    parser = argparse.ArgumentParser(prog="llavakit", description="Run LLaVA-family vision-language models. "
                                     "Every command takes --model (default: the built-in demo model).",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"llavakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for p in sub.choices.values():  # every subcommand's --help shows the defaults
        p.formatter_class = HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to re-run the command (--tensor-parallel-size)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, NotImplementedError, ImportError) as err:
        # Bad input from the user, or a missing optional package: one readable line, no traceback.
        print(f"llavakit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: stop quietly (batch resumes from what it wrote)
        print(f"\nllavakit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
