"""The parser of ``dali-relabel`` and the one place that turns errors into exit codes.

Each group module adds its verbs with ``add_commands(subparsers)``; each verb's parser
sets ``func(args) -> int``. Group modules import the library only inside a verb, so
that ``dali-relabel --help`` does not import torch or DALI.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from dali_relabel.cli import _labelmaps, _store, _tools
from dali_relabel.errors import DaliRelabelError, DaliRelabelWarning

__all__ = ["build_parser", "main"]

# The groups of verbs, in the order `--help` lists them.
_GROUPS = (_tools, _labelmaps, _store)


def build_parser() -> argparse.ArgumentParser:
    from dali_relabel import __version__

    parser = argparse.ArgumentParser(
        prog="dali-relabel",
        description="ReLabel label maps and a DALI loader for training on them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dali-relabel`` with ``argv`` (default: the process's arguments); the exit code.

    The library's errors and OSError (a missing file, a full disk) are printed as one line
    with exit code 1; anything else is a bug and keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    with warnings.catch_warnings():
        _notes_as_lines(args.command)
        return _run(args)


def _notes_as_lines(command: str) -> None:
    """Print the library's warnings as one line each, as its errors are."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DaliRelabelWarning):
            print(f"dali-relabel {command}: note: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except (DaliRelabelError, OSError) as e:  # said on purpose, or the system's: one line
        print(f"dali-relabel {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"dali-relabel {args.command}: interrupted", file=sys.stderr)
        return 130
