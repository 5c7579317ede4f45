"""`dali-relabel bench` (benchmark_throughput) end to end, at a tiny size.

Its numbers are not asserted (speed lives in benchmarks); what is asserted is that every
path runs in a process of its own and that the report says what it measured.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dali_relabel.cli import main


@pytest.mark.slow
def test_bench_runs_each_path_and_reports(tmp_path, capsys):
    args = ["bench", "--paths", "official,dali,relabel_memory", "--images-per-class", "4"]
    args += ["--batch-size", "8", "--crop-size", "64", "--windows", "2", "--window-batches", "2"]
    args += ["--warmup-batches", "1", "--out-dir", str(tmp_path)]
    assert main(args) == 0
    results = json.loads((tmp_path / "throughput.json").read_text())
    assert set(results["paths"]) == {"official", "dali", "relabel_memory"}
    for name, r in results["paths"].items():
        assert "error" not in r, (name, r)
        assert r["min"] <= r["images_per_s"] <= r["max"] and r["peak_host_rss_mb"] > 0
        assert r["cpu_ms_per_image"] > 0
    ratio = results["ratios"]["relabel_memory_vs_dali"]
    p = results["paths"]
    assert ratio == pytest.approx(p["relabel_memory"]["images_per_s"] / p["dali"]["images_per_s"])
    # paired: the median of the two windows of each round, taken in turns
    pairs = zip(p["relabel_memory"]["windows"], p["dali"]["windows"], strict=True)
    paired = sorted(a / b for a, b in pairs)
    assert results["ratios_paired"]["relabel_memory_vs_dali"] == pytest.approx(
        (paired[0] + paired[1]) / 2
    )
    assert (tmp_path / "throughput.md").read_text().count("\n") == 5
    with Image.open(tmp_path / "throughput.png") as im:
        assert im.format == "PNG"
