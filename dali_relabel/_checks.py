"""Argument checks shared by the library's entry points.

Each raises :class:`~dali_relabel.errors.ArgumentError` (a ValueError) with a message
naming the argument and the value received, and returns the value normalized.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from dali_relabel.errors import ArgumentError

__all__ = ["at_least", "device", "one_of", "positive_int", "positive_number"]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1 (bools and floats refused)."""
    if not _is_int(value) or value < 1:
        raise ArgumentError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def at_least(name: str, value: Any, low: int) -> int:
    """``value`` as an int >= ``low``."""
    if not _is_int(value):
        raise ArgumentError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ArgumentError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def positive_number(name: str, value: Any) -> float:
    """``value`` as a finite float > 0 (bools and strings refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not 0 < value < math.inf
    ):
        raise ArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def one_of(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` when it is one of ``choices``."""
    if value not in choices:
        listed = ", ".join(map(repr, choices))
        raise ArgumentError(f"{name} must be one of {listed}, got {value!r}")
    return value


def device(name: str, value: Any) -> Any:
    """``value`` as a ``torch.device`` ("cpu", "cuda", "cuda:1" or a device) that exists
    here: "cuda" without a CUDA device (no GPU, no driver, or a CPU-only torch) is refused
    with the fix, not a traceback."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ArgumentError(
            f"{name} must be a torch device such as 'cpu' or 'cuda:0', got {value!r}"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError(
                f"{name}={value!r} but CUDA is not available here (no GPU, no driver, or a "
                f"CPU-only torch); use {name}='cpu' (--device cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ArgumentError(
                f"{name}={value!r} but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return dev
