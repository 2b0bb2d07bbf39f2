"""The `llavakit` command: one subcommand per job, each in its own module, imported only when used."""

from __future__ import annotations

import argparse
import sys

from llavakit.cli import batch, chat, convert, eval_mc, generate, merge, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llavakit", description="Run LLaVA-family vision-language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub)
    convert.add_parser(sub)
    eval_mc.add_parser(sub)
    train.add_parser(sub)
    merge.add_parser(sub)
    serve.add_parser(sub)
    chat.add_parser(sub)
    batch.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to re-run the command (--tensor-parallel-size)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, NotImplementedError) as err:
        # Bad input from the user: one readable line, no traceback.
        print(f"llavakit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
