"""Timing and reporting shared by the benchmarks (FFCV's habit: warm-up, then the
median of several timed windows with min and max; JSON out)."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dali_relabel.tools import machine  # what the numbers were measured on

__all__ = ["emit", "machine", "time_windows"]


def time_windows(fn: Callable[[], Any], *, windows: int = 5, warmup: int = 1) -> dict[str, float]:
    """Seconds per call of ``fn``: median, min and max over ``windows`` timed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def emit(result: dict[str, Any], out: str | Path | None) -> None:
    """Print ``result`` as JSON and write it to ``out`` when given."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    sys.stdout.flush()
