"""The ImageFolder sample list and the bad-file checks."""

from __future__ import annotations

import os
import shutil

import pytest
import torchvision
from PIL import Image

from dali_relabel.errors import ClassTableError, DaliRelabelWarning, TreeError
from dali_relabel.imagefolder import (
    ImageFolderList,
    check_image_file,
    find_bad_images,
    scan_image_folder,
)
from dali_relabel.imagenet import imagenet_wnids


@pytest.fixture
def tree(sample_data, tmp_path):
    """The sample photos plus what ImageFolder also handles: nesting, case, stray files."""
    root = tmp_path / "train"
    shutil.copytree(sample_data.train, root)
    cat = root / "n02124075"
    (cat / "nested").mkdir()
    shutil.copy(cat / "n02124075_1.JPEG", cat / "nested" / "deep.jpg")
    shutil.copy(cat / "n02124075_2.JPEG", cat / "UPPER.JPG")
    (cat / "notes.txt").write_text("not an image")
    (root / "stray.JPEG").write_bytes((cat / "n02124075_3.JPEG").read_bytes())
    return root


def test_order_and_classes_match_torchvision_image_folder(tree):
    ours = ImageFolderList.scan(tree)
    theirs = torchvision.datasets.ImageFolder(str(tree))
    assert ours.samples == theirs.samples
    assert ours.classes == theirs.classes == ours.folders
    assert ours.class_to_idx == theirs.class_to_idx
    assert ours.targets == theirs.targets and len(ours) == len(theirs) == 42
    assert "n02124075/nested/deep" in ours.keys and "n02124075/UPPER" in ours.keys
    assert [key for key, _ in scan_image_folder(tree)] == ours.keys
    assert ours.relative_paths()[0] == "n02124075/UPPER.JPG"
    assert ours[0] == ours.samples[0]


def test_class_table_maps_folders_to_its_indices(sample_data):
    wnids = imagenet_wnids()
    ours = ImageFolderList.scan(sample_data.train, class_names=wnids)
    assert ours.classes == list(wnids) and len(ours.folders) == 5
    assert ours.targets == list(sample_data.labels)
    assert all(
        ours.classes[t] == k.split("/")[0] for k, t in zip(ours.keys, ours.targets, strict=True)
    )
    with pytest.raises(ClassTableError, match=r"5 class folders .* not in"):
        ImageFolderList.scan(sample_data.train, class_names=["a", "b"])


def test_duplicate_keys_and_empty_trees(sample_data, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(sample_data.train, root)
    Image.new("RGB", (8, 8)).save(root / "n02124075" / "n02124075_0.png")
    with pytest.raises(ValueError, match=r"1 images .* share a path without extension"):
        ImageFolderList.scan(root)
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        ImageFolderList.scan(tmp_path / "train" / "n02124075")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_image_folder(tmp_path / "nothing")


def test_subset_keeps_the_class_table(sample_data):
    full = ImageFolderList.scan(sample_data.train, class_names=imagenet_wnids())
    part = full.subset([39, 0])
    assert part.keys == [full.keys[39], full.keys[0]]
    assert part.targets == [full.targets[39], full.targets[0]] and part.classes == full.classes


def test_bad_file_checks(sample_data, tmp_path):
    good = sample_data.train / "n02124075" / "n02124075_0.JPEG"
    raw = good.read_bytes()
    files = {
        "good.JPEG": raw,
        "trailing_bytes.JPEG": raw + b"\x00" * 100,  # decodes fine: no false alarm
        "truncated.JPEG": raw[: len(raw) // 2],
        "text.JPEG": b"hello\n" * 20,
        "empty.JPEG": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    photo = Image.open(good)
    photo.save(tmp_path / "png.JPEG", "PNG")
    photo.convert("CMYK").save(tmp_path / "cmyk.JPEG", "JPEG")
    photo.convert("L").save(tmp_path / "gray.JPEG", "JPEG")
    png = (tmp_path / "png.JPEG").read_bytes()
    (tmp_path / "bad_png.JPEG").write_bytes(png[:-200])
    assert check_image_file(tmp_path / "good.JPEG") is None
    assert check_image_file(tmp_path / "good.JPEG", full=True) is None
    for name in ("trailing_bytes", "png", "cmyk", "gray"):
        assert check_image_file(tmp_path / f"{name}.JPEG") is None, name
    assert "cannot be decoded" in check_image_file(tmp_path / "truncated.JPEG")
    assert "is not an image" in check_image_file(tmp_path / "text.JPEG")
    assert check_image_file(tmp_path / "empty.JPEG") == "is empty"
    assert "cannot be decoded" in check_image_file(tmp_path / "bad_png.JPEG")
    assert "cannot be read" in check_image_file(tmp_path / "missing.JPEG")
    paths = sorted(tmp_path.iterdir())
    bad = {paths[i].name for i, _ in find_bad_images(paths, workers=2)}
    assert bad == {"truncated.JPEG", "text.JPEG", "empty.JPEG", "bad_png.JPEG"}


def test_a_symlink_loop_is_an_error_naming_it(sample_data, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(sample_data.train, root)
    (root / "n02124075" / "again").symlink_to("..")  # a loop: listed forever before
    with pytest.raises(TreeError, match=r"directory loop: '.*n02124075/again' leads back"):
        ImageFolderList.scan(root)
    with pytest.raises(TreeError, match="directory loop"):
        scan_image_folder(root)


def test_symlinked_folders_outside_the_tree_are_followed_inside_it_not(sample_data, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(sample_data.train, root)
    outside = tmp_path / "more"
    outside.mkdir()
    shutil.copy(root / "n02124075" / "n02124075_0.JPEG", outside / "extra.JPEG")
    (root / "n02124075" / "linked").symlink_to(outside)  # followed, as ImageFolder does
    (root / "n03773504" / "cats").symlink_to(root / "n02124075")  # would relabel 8 cats
    with pytest.warns(DaliRelabelWarning, match=r"1 symlinked folders .* not followed.*cats"):
        found = ImageFolderList.scan(root)
    assert "n02124075/linked/extra" in found.keys
    assert not any(key.startswith("n03773504/cats") for key in found.keys)
    assert len(found) == 41


def test_a_name_that_is_not_utf8_is_named(sample_data, tmp_path):
    root = tmp_path / "train"
    shutil.copytree(sample_data.train, root)
    raw = os.fsencode(root / "n02124075") + b"/caf\xe9.JPEG"  # latin-1, not UTF-8
    with open(raw, "wb") as f:
        f.write((root / "n02124075" / "n02124075_0.JPEG").read_bytes())
    with pytest.raises(TreeError) as error:
        ImageFolderList.scan(root)
    message = str(error.value)
    assert "n02124075/caf\\udce9.JPEG" in message  # its os.fsdecode form, printable
    assert "b'" in message and "\\xe9" in message and "not valid UTF-8" in message
    message.encode("utf-8")  # the message itself prints anywhere
