"""The loader against hostile or clumsy input: options refused at construction, batch
sizes far above the dataset, images that declare billions of pixels, and files DALI
cannot decode that Pillow's cheap checks pass."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from dali_relabel import ReLabelLoader
from dali_relabel.errors import ArgumentError, ImageDecodeError
from dali_relabel.imagefolder import check_image_file, check_image_header
from dali_relabel.loader._images import dali_cause

FAST = {"crop_size": 64, "num_threads": 2, "device": "cpu"}


@pytest.fixture
def folder(sample_data, tmp_path):
    """Two classes of the sample photos, 8 images each."""
    root = tmp_path / "train"
    for wnid in ("n02124075", "n07920052"):
        shutil.copytree(sample_data.train / wnid, root / wnid)
    return root


def _bomb(size=(20000, 20000)) -> bytes:
    """A small real JPEG whose header declares ``size`` (width, height)."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
    raw = bytearray(buf.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5 : sof + 7] = size[1].to_bytes(2, "big")
    raw[sof + 7 : sof + 9] = size[0].to_bytes(2, "big")
    return bytes(raw)


# test_loader.py's test_empty_folders_and_bad_arguments has the other option checks
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 1.5}, r"seed must be an int >= 0, got 1\.5"),
        ({"scale": (0.0, 1.0)}, r"scale must be .*got \(0\.0, 1\.0\)"),
        ({"scale": (0.5, 1.5)}, r"scale must be \(low, high\) with 0 < low <= high <= 1, got"),
        ({"scale": 0.5}, r"scale must be \(low, high\).*got 0\.5; RandomResizedCrop's default"),
        ({"ratio": (4 / 3, 3 / 4)}, r"ratio must be \(low, high\) with 0 < low <= high, got"),
        ({"ratio": (1.0, float("inf"))}, r"ratio must be .*default is \(3/4, 4/3\)"),
        ({"max_image_pixels": 0}, r"max_image_pixels must be a positive int, got 0"),
    ],
)
def test_bad_options_are_refused_at_construction(folder, kwargs, message):
    # inverted scale or ratio failed only at the first batch, with a DALI traceback
    with pytest.raises(ArgumentError, match=message):
        ReLabelLoader(folder, None, 4, **{**FAST, **kwargs})


@pytest.mark.parametrize("train", [True, False])
def test_a_batch_far_above_the_dataset_is_the_dataset_once(folder, train):
    # DALI decoded the padding of a 4,096 batch (18x the time) and crashed at 10^6
    loader = ReLabelLoader(folder, None, 10**6, train=train, **FAST)
    assert loader.batch_size == 10**6 and len(loader) == 1  # as asked, as a DataLoader
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [16]
    assert sorted(batches[0][1].tolist()) == sorted(loader.dataset.targets)


def _feeds(loader, monkeypatch) -> list[list[int]]:
    """The sample indices fed to the loader's DALI pipeline, per batch."""
    fed: list[list[int]] = []
    build = loader.build_pipeline

    def spying(**kwargs):
        pipe = build(**kwargs)
        feed_input = pipe.feed_input

        def feeding(name, data, *args, **kw):
            if name == "indices":
                fed.append(np.asarray(data).tolist())
            return feed_input(name, data, *args, **kw)

        pipe.feed_input = feeding
        return pipe

    monkeypatch.setattr(loader, "build_pipeline", spying)
    return fed


def test_an_image_that_declares_too_many_pixels_is_skipped(folder):
    bomb = _bomb()
    assert len(bomb) < 1500  # 1.5 kB that decode to 1.2 GB of grey
    (folder / "n02124075" / "zz_bomb.JPEG").write_bytes(bomb)
    reason = "declares 20,000 x 20,000 = 400,000,000 pixels in its header"
    assert reason in check_image_file(folder / "n02124075" / "zz_bomb.JPEG")
    assert reason in check_image_header(folder / "n02124075" / "zz_bomb.JPEG")
    with pytest.warns(UserWarning, match="left out 1 of 17 images"):
        loader = ReLabelLoader(folder, None, 8, on_bad_image="skip", **FAST)
    [(path, reason)] = loader.skipped_images
    assert path.endswith("zz_bomb.JPEG") and "max_image_pixels" in reason
    assert sum(len(images) for images, _ in loader) == 16
    with pytest.warns(UserWarning, match="left out 17 of 17"), pytest.raises(ImageDecodeError):
        ReLabelLoader(folder, None, 8, max_image_pixels=10_000, on_bad_image="skip", **FAST)


@pytest.mark.parametrize(
    ("name", "batch_size", "yielded"),
    [
        ("a_bomb.JPEG", 4, 0),  # the first batch of the pipeline: nothing fed before it
        ("zz_bomb.JPEG", 8, 1),  # the second: the pipeline starts without it
        ("zz_bomb.JPEG", 4, 2),  # a later one: the pipeline runs on without it
    ],
)
def test_an_image_that_declares_too_many_pixels_is_never_decoded(
    folder, monkeypatch, name, batch_size, yielded
):
    (folder / "n02124075" / name).write_bytes(_bomb())
    loader = ReLabelLoader(folder, None, batch_size, train=False, **FAST)
    bomb = next(i for i, p in enumerate(loader.dataset.paths) if p.endswith(name))
    fed = _feeds(loader, monkeypatch)
    for _ in range(2):  # the next epoch refuses it again
        batches = iter(loader)
        taken = []
        with pytest.raises(ImageDecodeError) as error:
            for images, _ in batches:
                taken.append(len(images))
        assert taken == [batch_size] * yielded  # the batches before it are yielded
        assert name in str(error.value) and "400,000,000 pixels" in str(error.value)
        assert "raise max_image_pixels" in str(error.value)
        assert next(batches, None) is None  # its epoch is over
    assert len(fed) >= 2 * yielded and all(bomb not in batch for batch in fed)  # never fed
    # the pipeline was not broken by the refusal: evaluation without the bomb runs on
    (folder / "n02124075" / name).unlink()
    assert check_image_header(folder / "n02124075" / "n02124075_0.JPEG", 10_000)
    small = ReLabelLoader(folder, None, 8, max_image_pixels=10_000, train=False, **FAST)
    with pytest.raises(ImageDecodeError, match=r"n02124075_0\.JPEG declares .* limit of 10,000"):
        next(iter(small))
    unlimited = ReLabelLoader(folder, None, 8, max_image_pixels=None, train=False, **FAST)
    assert sum(len(images) for images, _ in unlimited) == 16


def test_png_and_pillow_formats_are_held_to_the_limit(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "a.png")
    Image.new("RGB", (300, 200)).save(tmp_path / "a.bmp")
    for name in ("a.png", "a.bmp"):
        assert check_image_file(tmp_path / name) is None
        assert check_image_header(tmp_path / name) is None
        reason = "declares 300 x 200 = 60,000 pixels"
        assert reason in check_image_file(tmp_path / name, max_pixels=50_000)
        assert reason in check_image_header(tmp_path / name, 50_000)
        assert check_image_file(tmp_path / name, max_pixels=None) is None
    (tmp_path / "b.JPEG").write_bytes(b"not an image")  # the decoder names such a file
    assert check_image_header(tmp_path / "b.JPEG", 1) is None


def test_a_file_only_dali_fails_on_is_named_with_dalis_cause(folder):
    # Pillow's cheap checks pass (JPEG signature, end marker), DALI cannot decode it: the
    # error named no file, or gave "(Current pipeline object is no longer valid.)"
    raw = (folder / "n02124075" / "n02124075_0.JPEG").read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (folder / "n02124075" / "zz_noise.JPEG").write_bytes(raw[:600] + noise + b"\xff\xd9")
    assert check_image_file(folder / "n02124075" / "zz_noise.JPEG") is None
    for train in (True, False):
        loader = ReLabelLoader(folder, None, 4, train=train, **FAST)
        with pytest.raises(ImageDecodeError) as error:
            for _ in loader:
                pass
        message = str(error.value)
        assert "zz_noise.JPEG" in message and "no longer valid" not in message
        assert "DALI: nvImageCodec failure" in message
        assert error.value.__cause__ is not error.value


def test_dali_cause_drops_the_boilerplate():
    message = (
        "Critical error in pipeline:\nError in CPU operator `nvidia.dali.fn.decoders.image`,\n"
        "which was used in the pipeline definition with the following traceback:\n\n"
        '  File "graph.py", line 256, in graph\n    images = fn.decoders.image(\n\n'
        "encountered:\n\nnvImageCodec failure: '#3'\nCurrent pipeline object is no longer "
        "valid.\nCurrent pipeline object is no longer valid."
    )
    assert dali_cause(message) == "nvImageCodec failure: '#3'"
    assert dali_cause("encountered:\n\nFailed to decode sample #1 : \n") == (
        "Failed to decode sample #1"
    )
    assert dali_cause("Current pipeline object is no longer valid.") == "DALI gave no detail"
