"""`dali-relabel report`: figures against float64 references, the loader's crops, flat stores.

The report's figures are checked against references written here: a float64 loop over
cells for the agreement, torchvision's roi_align on the densified map and a softmax by
hand for the targets. Its crops (the loader's own host code, :mod:`dali_relabel._rrc`)
are checked against torchvision's RandomResizedCrop and the images' real sizes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import RandomResizedCrop

from dali_relabel.cli import main
from dali_relabel.imagenet import imagenet_wnids
from dali_relabel.labelmaps import LabelMapReport, label_map_report
from dali_relabel.labelmaps._report import ASSUMED_SIZE, FLAT_TOP1
from dali_relabel.store import LabelMapStore, LabelMapWriter


# -- references ------------------------------------------------------------------------
def _dense64(scores: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """[k, H, W] top-k -> [C, H, W] float64, absent classes at 0 (a loop over cells)."""
    k, h, w = scores.shape
    dense = np.zeros((num_classes, h, w))
    for i in range(h):
        for j in range(w):
            for r in range(k):
                dense[int(classes[r, i, j]), i, j] = float(scores[r, i, j])
    return dense


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _crop_pooled(dense: np.ndarray, box: np.ndarray) -> np.ndarray:
    """ReLabel's get_relabel mapping: roi_align on the dense map, grid units - 0.5."""
    _, h, w = dense.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    rois = torch.tensor([[0, x1 * w - 0.5, y1 * h - 0.5, x2 * w - 0.5, y2 * h - 0.5]]).double()
    out = roi_align(torch.from_numpy(dense)[None], rois, 1, spatial_scale=1.0, sampling_ratio=-1)
    return out[0, :, 0, 0].numpy()


def _store(path, keys, scores, classes, class_names=None, **params) -> LabelMapStore:
    """A finished 1,000-class store of the maps given, [n, k, H, W] (one shard); class
    names ImageNet's unless given."""
    n, k, h, w = scores.shape
    writer = LabelMapWriter.create(
        path, keys, num_classes=1000, k=k, grid=(h, w), shard_size=n,
        class_names=imagenet_wnids() if class_names is None else class_names,
        provenance={"source": "test"}, **params,
    )  # fmt: skip
    writer.write_block(0, scores, np.asarray(classes, dtype=np.int64))
    return writer.finalize()


# -- the figures -------------------------------------------------------------------------
def test_figures_match_float64_references(sample_store, sample_data):
    report = label_map_report(sample_store, sample_data.train, samples=25, seed=3)
    assert report.sampled == 25 and report.total == len(sample_data.keys) == 40
    assert len(set(report.keys)) == 25 and set(report.keys) <= set(sample_data.keys)
    assert report.sizes_known
    label_of = dict(zip(sample_data.keys, sample_data.labels, strict=True))
    scores, classes = sample_store.read(sample_store.indices(report.keys))
    want = {name: [] for name in ("top1", "ent", "agree", "ctop1", "cent", "cagree")}
    cells = agreeing = 0
    for key, s, c, box in zip(report.keys, scores, classes, report.boxes, strict=True):
        dense = _dense64(s, c, 1000)
        label = label_of[key]
        full = _softmax(dense.mean(axis=(1, 2)))  # the full box pools every cell equally
        crop = _softmax(_crop_pooled(dense, box))
        for p, top1, ent, agree in (
            (full, "top1", "ent", "agree"),
            (crop, "ctop1", "cent", "cagree"),
        ):
            want[top1].append(p.max())
            want[ent].append(_entropy(p))
            want[agree].append(int(p.argmax()) == label)
        for i in range(s.shape[1]):
            for j in range(s.shape[2]):
                best = int(c[int(np.argmax(s[:, i, j].astype(np.float64))), i, j])
                cells += 1
                agreeing += best == label
    np.testing.assert_allclose(report.full_top1, want["top1"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report.crop_top1, want["ctop1"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(report.full_entropy, want["ent"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(report.crop_entropy, want["cent"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(report.full_agree, want["agree"])
    np.testing.assert_array_equal(report.crop_agree, want["cagree"])
    figures = report.figures()
    assert figures["cell_folder_agreement"] == pytest.approx(agreeing / cells, abs=1e-12)
    assert figures["full_image"]["mean_top1"] == pytest.approx(np.mean(want["top1"]), rel=1e-5)
    assert figures["full_image"]["folder_agreement"] == pytest.approx(np.mean(want["agree"]))
    # The crops lie inside the images, and each image's own size was used: every box is
    # a whole-pixel window of its image.
    assert np.all(report.boxes[:, :2] >= 0) and np.all(report.boxes[:, 2:] <= 1)
    assert np.all(report.boxes[:, 2:] > report.boxes[:, :2])
    files = {
        p.relative_to(sample_data.train).with_suffix("").as_posix(): p
        for p in sample_data.train.rglob("*")
        if p.is_file()
    }
    for key, box in zip(report.keys, report.boxes.astype(np.float64), strict=True):
        with Image.open(files[key]) as im:
            pixels = box * [im.width, im.height, im.width, im.height]
        np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)


def test_agreement_joins_folders_by_the_store_class_table(sample_data, tmp_path):
    # A store whose class table puts the photos' classes elsewhere: the folder's class is
    # looked up by name, so agreement follows the table, not the folder's ImageNet index.
    wnids = list(imagenet_wnids())
    first = sample_data.keys[0].split("/")[0]
    pos = wnids.index(first)
    wnids[pos], wnids[0] = wnids[0], wnids[pos]  # the first folder's class is now index 0
    keys = [k for k in sample_data.keys if k.startswith(first)]
    maps = np.ones((len(keys), 1, 2, 2))
    store = _store(tmp_path / "swapped.zarr", keys, maps, np.zeros_like(maps), wnids)
    report = label_map_report(store, sample_data.train)
    assert report.full_agree.all() and report.cell_agree.min() == 1.0
    assert report.without_map == len(sample_data.keys) - len(keys)


def test_without_images_there_is_no_agreement_and_crops_are_square(sample_store):
    report = label_map_report(sample_store, samples=10)
    assert report.full_agree is None and report.cell_agree is None and not report.sizes_known
    assert "not measured (no --images)" in report.table()
    assert "top class = folder" not in report.headline()


def test_sample_is_reproducible_and_bounded(sample_store, sample_data):
    a = label_map_report(sample_store, sample_data.train, samples=10, seed=7)
    b = label_map_report(sample_store, sample_data.train, samples=10, seed=7)
    assert a.keys == b.keys and np.array_equal(a.boxes, b.boxes)
    assert label_map_report(sample_store, samples=1000).sampled == 40
    with pytest.raises(ValueError, match="samples must be a positive int, got 0"):
        label_map_report(sample_store, samples=0)
    with pytest.raises(ValueError, match="none of the 40 images"):
        label_map_report(
            _store_of(sample_data.root / "other.zarr", ["x/y"], 0.0), sample_data.train
        )


# -- the loader's crops ----------------------------------------------------------------
def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    grid = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    fb = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def _window_stats(boxes: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """Area fraction, log aspect ratio and centre of normalized (x1, y1, x2, y2) boxes."""
    bw, bh = (boxes[:, 2] - boxes[:, 0]) * w, (boxes[:, 3] - boxes[:, 1]) * h
    return {
        "area": bw * bh / (h * w),
        "log_ratio": np.log(bw / bh),
        "centre_x": (boxes[:, 0] + boxes[:, 2]) / 2,
        "centre_y": (boxes[:, 1] + boxes[:, 3]) / 2,
    }


@pytest.mark.parametrize(
    ("scale", "ratio"), [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.3, 0.5), (0.5, 2.0))]
)
def test_crops_are_torchvisions_random_resized_crop(tmp_path, scale, ratio):
    # Without --images the crops are drawn on ASSUMED_SIZE squares: their distribution
    # must be that of torchvision's RandomResizedCrop.get_params with the same ranges.
    n = 3000
    keys = [f"c/{i:05d}" for i in range(n)]
    store = _store(tmp_path / "many.zarr", keys, np.ones((n, 1, 1, 1)), np.zeros((n, 1, 1, 1)))
    report = label_map_report(store, samples=n, scale=scale, ratio=ratio)
    assert report.scale == scale and report.ratio == pytest.approx(ratio)
    side = ASSUMED_SIZE
    torch.manual_seed(0)
    image = torch.empty(3, side, side)
    want = np.array(
        [RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(n)],
        dtype=np.float64,
    )  # (i, j, h, w)
    want_boxes = (
        np.stack([want[:, 1], want[:, 0], want[:, 1] + want[:, 3], want[:, 0] + want[:, 2]], axis=1)
        / side
    )
    ours, theirs = _window_stats(report.boxes, side, side), _window_stats(want_boxes, side, side)
    for name in ours:
        assert _ks(ours[name], theirs[name]) < 0.05, name
    # Every box is a whole-pixel window of the image, inside it.
    pixels = report.boxes.astype(np.float64) * side
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    assert np.all(report.boxes[:, :2] >= 0) and np.all(report.boxes[:, 2:] <= 1)


# -- flat stores -----------------------------------------------------------------------
def _store_of(path, keys, value: float, score_kind: str = "logits"):
    """15x15 top-5 maps of classes 0-4, every score ``value``."""
    scores = np.full((len(keys), 5, 15, 15), value, np.float32)
    classes = np.broadcast_to(np.arange(5)[None, :, None, None], scores.shape)
    return _store(path, keys, scores, classes, score_kind=score_kind)


def test_uniform_maps_are_reported_flat_and_warned_about(sample_data, tmp_path, capsys):
    store = _store_of(tmp_path / "uniform.zarr", list(sample_data.keys), 0.0)
    report = label_map_report(store, sample_data.train)
    assert report.flat and report.mean_top1 == pytest.approx(1 / 1000)
    assert report.full_entropy == pytest.approx(np.log(1000))
    warning = report.warning()
    for fix in ("own resolution", "--grid", "temperature"):
        assert fix in warning
    assert "warning: the targets are flat" in report.table()

    out, js = tmp_path / "r.png", tmp_path / "r.json"
    code = main(
        [
            "report",
            str(store.path),
            "--images",
            str(sample_data.train),
            "-o",
            str(out),
            "--json",
            str(js),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "warning: the targets are flat" in printed and f"wrote {out}" in printed
    data = json.loads(js.read_text())
    assert data["flat"] is True and data["figures"]["full_image"]["mean_top1"] < FLAT_TOP1
    assert sum(data["histograms"]["top1"]["full_image"]) == 40
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 600


def test_convert_of_uniform_maps_warns(tmp_path, capsys):
    # Official-format .pt maps whose logits are all 0: uniform targets.
    src = tmp_path / "pt" / "n02124075"
    src.mkdir(parents=True)
    for n in range(3):
        maps = torch.zeros(2, 5, 15, 15)
        maps[1] = torch.arange(5.0)[:, None, None]
        torch.save(maps, src / f"n02124075_{n}.pt")
    assert main(["convert", str(tmp_path / "pt"), str(tmp_path / "u.zarr"), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "targets: top-1 probability 0.00 on average" in captured.out
    assert "warning: the targets are flat" in captured.err and "temperature" in captured.err
    # A folder that does not fit the store: the store is still written, the report skipped.
    (tmp_path / "odd" / "not_a_wnid").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "odd" / "not_a_wnid" / "x.JPEG")
    args = ["convert", str(tmp_path / "pt"), str(tmp_path / "v.zarr"), "--workers", "1"]
    assert main([*args, "--images", str(tmp_path / "odd")]) == 0
    captured = capsys.readouterr()
    assert "note: no report of the store" in captured.err and "not_a_wnid" in captured.err


def test_probability_stores_are_flat_in_the_loader_and_told_why(sample_data, tmp_path):
    # A confident teacher's probabilities (0.9 on one class): the loader's softmax over
    # pooled scores treats them as logits, so the targets come out nearly uniform.
    store = _store_of(tmp_path / "p.zarr", list(sample_data.keys), 0.9, "probabilities")
    report = label_map_report(store)
    want = np.exp(0.9) / (np.exp(0.9) * 5 + 995)  # softmax by hand: five classes at 0.9
    assert report.mean_top1 == pytest.approx(want, rel=1e-3) and report.flat
    assert "holds probabilities" in report.warning() and "--scores logits" in report.warning()


def test_sharp_store_gets_no_warning(sample_store, sample_data):
    # The sample's synthetic maps give the image's class a logit of about 10 in a blob.
    report = label_map_report(sample_store, sample_data.train)
    assert not report.flat and report.warning() is None
    assert isinstance(report, LabelMapReport)
