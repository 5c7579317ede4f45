"""The ``dali-relabel`` command line.

Each verb lives in the module that does the work; a module adds its verbs through
``add_commands(subparsers)`` and each verb's parser sets ``func(args) -> int``.
Modules are imported here, but import their heavy dependencies (torch, DALI) only
inside the verb, so that ``dali-relabel --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from dali_relabel.errors import DaliRelabelError

__all__ = ["build_parser", "main"]

# Modules that contribute verbs, in the order `--help` lists them.
_COMMAND_MODULES = (
    "dali_relabel.demo",
    "dali_relabel.sample",
    "dali_relabel.convert",
    "dali_relabel.generate",
    "dali_relabel.ensemble",
    "dali_relabel.show",
    "dali_relabel.bench",
)


def build_parser() -> argparse.ArgumentParser:
    from dali_relabel import __version__

    parser = argparse.ArgumentParser(
        prog="dali-relabel",
        description="ReLabel label maps and a DALI loader for training on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (DaliRelabelError, FileNotFoundError, ValueError, KeyError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"dali-relabel {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dali-relabel {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
