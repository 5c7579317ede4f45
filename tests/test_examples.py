"""The examples run as documented (a few steps on the real-photo sample, on the CPU)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _train_imagenet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "train_imagenet.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_train_imagenet_on_the_sample():
    run = _train_imagenet("--sample", "--steps", "3", "--crop-size", "64", "--batch-size", "8")
    assert run.returncode == 0, run.stderr[-2000:]
    steps = re.findall(r"epoch 0 step (\d+)/3 loss ([0-9.]+)", run.stdout)
    assert [s for s, _ in steps] == ["1", "3"]  # the last step is reported, no step 4
    assert all(float(loss) > 0 for _, loss in steps)
    top1 = re.search(r"epoch 0 val top-1 ([0-9.]+)%", run.stdout)
    assert top1 is not None and 0.0 <= float(top1.group(1)) <= 100.0


@pytest.mark.slow
def test_train_imagenet_local_targets_on_the_sample():
    """--local: per-cell targets on the grid of the model's last feature map (2 x 2 for a
    ResNet at 64 px), the per-cell loss, and evaluation on the cells' mean logits."""
    run = _train_imagenet(
        "--sample", "--local", "--steps", "2", "--crop-size", "64", "--batch-size", "8"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "local targets on the model's (2, 2) feature map" in run.stdout
    losses = [float(x) for x in re.findall(r"epoch 0 step \d+/2 loss ([0-9.]+)", run.stdout)]
    # a cross-entropy over 1,000 classes per cell: near log(1000) = 6.9 from the start
    assert len(losses) == 2 and all(4.0 < loss < 12.0 for loss in losses)
    assert re.search(r"epoch 0 val top-1 ([0-9.]+)%", run.stdout) is not None
