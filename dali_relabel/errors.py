"""Exceptions of dali_relabel.

Each one also subclasses the builtin a caller would catch without knowing this
library (zarr's ``errors.py`` does the same), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "DaliRelabelError",
    "ImageDecodeError",
    "LabelMapFormatError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "StoreNotFoundError",
]


class DaliRelabelError(Exception):
    """Base class of every error raised on purpose by dali_relabel."""


class StoreNotFoundError(DaliRelabelError, FileNotFoundError):
    """A path or URL that should hold a label-map store does not."""


class StoreIncompleteError(DaliRelabelError, ValueError):
    """A store whose writing has not finished (an interrupted conversion)."""


class StoreMismatchError(DaliRelabelError, ValueError):
    """A store that does not fit what it is used with (other parameters, other keys)."""


class LabelMapFormatError(DaliRelabelError, ValueError):
    """A label-map file (official ``.pt`` or dense map) that is malformed."""


class ImageDecodeError(DaliRelabelError, RuntimeError):
    """An image that cannot be decoded."""
