"""`dali-relabel demo` end to end, at a tiny size.

Their numbers are not asserted (speed lives in benchmarks); what is asserted is that
every stage runs and writes what the README promises.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dali_relabel.cli import main
from dali_relabel.imagefolder import ImageFolderList
from dali_relabel.store import LabelMapStore


@pytest.mark.slow
def test_demo_writes_every_output(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        ["demo", "--out", str(out), "--images-per-class", "3", "--steps", "4", "--batch-size", "8"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for what, where in summary["outputs"].items():
        assert where in printed, what
    for picture in ("label_map_picture", "report_picture", "crops_picture", "loss_curve"):
        with Image.open(summary["outputs"][picture]) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert summary["training"]["steps"] == 4 and summary["label_maps"]["k"] == 5
    # generate's defaults: Lite0 at its own 224 px, stride 32
    assert summary["label_maps"]["grid"] == [7, 7] and summary["label_maps"]["resolution"] == 224
    figures = summary["label_maps"]["report"]
    assert 0 < figures["full_image"]["mean_top1"] <= 1
    assert 0 <= figures["cell_folder_agreement"] <= 1
    assert "targets: top-1 probability" in printed

    # Rerun with other data: the maps must be the new images' (they were the old ones')
    args = ["demo", "--out", str(out), "--images-per-class", "2", "--steps", "2"]
    assert main([*args, "--batch-size", "8"]) == 0
    store = LabelMapStore.open(out / "maps.zarr")
    data = ImageFolderList.scan(out / "data" / "train")
    assert store.keys == tuple(data.keys) and len(store) == 10
    stats = [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in data.paths]
    np.testing.assert_array_equal(store.sources(), np.array(stats))  # made from these files


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--steps", "0"]) == 1
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


def test_demo_on_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--device", "cuda", "--out", str(tmp_path / "d")]) == 1
    assert "CUDA is not available here" in capsys.readouterr().err
