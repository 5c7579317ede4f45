"""verify_keys and `dali-relabel verify`: a store's keys against an image folder."""

from __future__ import annotations

import shutil

from dali_relabel.cli import main
from dali_relabel.labelmaps import verify_keys


def test_a_matching_folder_is_ok(sample_data, sample_store, capsys):
    report = verify_keys(sample_store, sample_data.train)
    assert report.ok and report.images == report.maps == len(sample_data.keys)
    assert main(["verify", sample_store.path, "--images", str(sample_data.train)]) == 0
    assert "0 images without a label map" in capsys.readouterr().out


def test_missing_and_extra_keys_are_listed(sample_data, sample_store, tmp_path, capsys):
    train = tmp_path / "train"
    shutil.copytree(sample_data.train, train)
    (train / "n02124075" / "n02124075_0.JPEG").unlink()  # a map without an image
    for n in (1, 2):  # images without a map
        shutil.copy(train / "n02124075" / "n02124075_1.JPEG", train / "n02124075" / f"new_{n}.JPEG")
    report = verify_keys(sample_store.path, train)
    assert not report.ok and (report.images, report.maps) == (41, 40)
    assert report.without_map == ["n02124075/new_1", "n02124075/new_2"]
    assert report.without_image == ["n02124075/n02124075_0"]
    assert main(["verify", sample_store.path, "--images", str(train)]) == 1
    out = capsys.readouterr().out
    assert "2 images without a label map\n  n02124075/new_1\n  n02124075/new_2" in out
