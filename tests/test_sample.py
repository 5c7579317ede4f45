"""The real-photo sample data: layout, determinism, photo content, official-format maps."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from dali_relabel.cli import main
from dali_relabel.imagenet import imagenet_class_names, imagenet_wnids
from dali_relabel.tools import PHOTOS, load_photo, make_sample_data


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_sizes_and_quality(tmp_path):
    data = make_sample_data(tmp_path, images_per_class=3, seed=1)
    files = sorted(data.train.rglob("*.JPEG"))
    assert len(files) == 15 == len(data.keys)
    for path, key, label in zip(files, data.keys, data.labels, strict=True):
        wnid = path.parent.name
        assert key == f"{wnid}/{path.stem}" and path.stem.startswith(f"{wnid}_")
        assert imagenet_wnids()[label] == wnid
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert 350 <= max(im.size) <= 500
    assert data.label_maps is None


def test_deterministic_by_seed(tmp_path):
    a = make_sample_data(tmp_path / "a", images_per_class=2, seed=3, label_maps=True)
    b = make_sample_data(tmp_path / "b", images_per_class=2, seed=3, label_maps=True)
    c = make_sample_data(tmp_path / "c", images_per_class=2, seed=4)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.train) != _digest(c.train)


def test_photos_are_the_classes_they_claim():
    names = imagenet_class_names()
    assert names[PHOTOS["chelsea"][1]] == "Egyptian cat"
    assert names[PHOTOS["coffee"][1]] == "espresso"
    for name in PHOTOS:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert photo.std() > 20  # a photo, not a flat fill


def test_official_format_label_maps(tmp_path):
    data = make_sample_data(tmp_path, images_per_class=2, label_maps=True)
    for key, label in zip(data.keys, data.labels, strict=True):
        t = torch.load(data.label_maps / f"{key}.pt", weights_only=True)
        assert t.shape == (2, 5, 15, 15) and t.dtype == torch.float32
        classes = t[1]
        assert torch.equal(classes, classes.round()) and classes.min() >= 0 and classes.max() < 1000
        assert (t[0][:-1] >= t[0][1:]).all()  # each cell sorted by descending score
        for cell in classes.reshape(5, -1).T:
            assert len(set(cell.tolist())) == 5
        assert (classes == label).any(dim=0).all()  # the image's class is in every cell


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="images_per_class must be >= 1, got 0"):
        make_sample_data(tmp_path, images_per_class=0)
    with pytest.raises(ValueError, match="unknown"):
        make_sample_data(tmp_path, photos=("dog",))
    with pytest.raises(ValueError, match="num_classes=10 is too small"):
        make_sample_data(tmp_path, label_maps=True, num_classes=10)


def test_cli(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--images-per-class", "1", "--label-maps"]) == 0
    assert "wrote 5 images" in capsys.readouterr().out
    assert len(list((tmp_path / "label_maps").rglob("*.pt"))) == 5


def test_default_convert_stores_the_maps_in_the_grid_asked_for(tmp_path):
    """The maps are written in the official release's layout, so that `convert` without
    options (layout "official") gives back the (H, W) grid of the sample: a non-square
    grid shows which way round they are."""
    from dali_relabel.labelmaps import convert

    data = make_sample_data(
        tmp_path, images_per_class=2, photos=("chelsea",), label_maps=True, grid=(9, 15)
    )
    raw = torch.load(data.label_maps / f"{data.keys[0]}.pt", weights_only=True)
    assert raw.shape == (2, 5, 15, 9)  # the release's layout: W before H
    store = convert(data.label_maps, tmp_path / "maps.zarr", workers=1, progress=False)
    assert store.grid == (9, 15) and store.attrs["layout"] == "official"
    scores, classes = store.read(np.array([0]))
    assert np.array_equal(scores[0], raw[0].numpy().swapaxes(-1, -2).astype(scores.dtype))
    assert np.array_equal(classes[0], raw[1].numpy().swapaxes(-1, -2).astype(classes.dtype))


def test_a_rerun_leaves_only_matching_files_and_keeps_unchanged_ones(tmp_path):
    first = make_sample_data(tmp_path, images_per_class=3, seed=0, label_maps=True)
    cat = first.train / "n02124075" / "n02124075_0.JPEG"
    (first.train / "n02124075" / "mine.JPEG").write_bytes(cat.read_bytes())  # not a sample
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = make_sample_data(tmp_path, images_per_class=3, seed=0, label_maps=True)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes
    fewer = make_sample_data(tmp_path, images_per_class=2, seed=0)  # fewer images, no maps
    images = sorted(p.relative_to(fewer.train).as_posix() for p in fewer.train.rglob("*.JPEG"))
    assert images == sorted([f"{k}.JPEG" for k in fewer.keys] + ["n02124075/mine.JPEG"])
    assert not list((tmp_path / "label_maps").rglob("*.pt"))  # maps of other images: gone
    assert again.keys == first.keys and len(fewer.keys) == 10
