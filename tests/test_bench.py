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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--windows", "0"], "--windows must be >= 1, got 0"),
        (["--window-batches", "0"], "--window-batches must be >= 1, got 0"),
        (["--images-per-class", "0"], "--images-per-class must be >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--warmup-batches", "-1"], "--warmup-batches must be >= 0, got -1"),
        (["--paths", ","], "--paths must name one or more of official, "),
        (["--paths", "dali,fast"], "got 'dali,fast'"),
    ],
)
def test_bad_values_are_named_before_anything_runs(tmp_path, capsys, args, message):
    # zero windows used to end in "max() arg is an empty sequence"
    assert main(["bench", *args, "--out-dir", str(tmp_path / "b")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_library_refuses_zero_paths_and_zero_threads(tmp_path):
    from dali_relabel.tools import benchmark_throughput

    with pytest.raises(ValueError, match="paths must name at least one"):
        benchmark_throughput(tmp_path, paths=[])
    with pytest.raises(ValueError, match="threads must be a positive int, got 0"):
        benchmark_throughput(tmp_path, threads=0)
