"""The ``dali-relabel`` command line: the only place that knows argparse.

:func:`main` runs a verb; :func:`build_parser` is the parser. Each group of verbs lives
in its own module (``_tools``: demo, sample, show, bench; ``_labelmaps``: convert,
generate, ensemble; ``_store``: info, verify) and calls the library's functions.
"""

from __future__ import annotations

from dali_relabel.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
