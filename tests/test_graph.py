"""The DALI graphs: exported crop windows against the pixels they produced.

Each test image is a gradient whose red channel is its x coordinate and green its y
coordinate (0-255 across the image), so the output's mean red and green say where the
crop came from, whatever its size and aspect ratio. A box with x and y swapped, or off
by a scale, fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.loader import (
    build_eval_pipeline,
    build_train_pipeline,
    center_crop_boxes,
    default_resize_size,
    train_boxes,
)

SIZES = [(97, 203), (256, 128), (300, 300), (150, 420), (33, 40)]  # (H, W)
_MEAN = np.array(IMAGENET_MEAN) * 255
_STD = np.array(IMAGENET_STD) * 255


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    root = tmp_path_factory.mktemp("gradients")
    files = []
    for n, (h, w) in enumerate(SIZES):
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = np.rint(255 * (np.arange(w) + 0.5) / w)[None, :]
        img[..., 1] = np.rint(255 * (np.arange(h) + 0.5) / h)[:, None]
        name = f"g {n}.png"  # a space: file names are passed through as they are
        Image.fromarray(img).save(root / name)
        files.append(name)
    return root, files


def _rgb(images: np.ndarray) -> np.ndarray:
    """Normalized NCHW back to 0-255 NHWC."""
    return images.transpose(0, 2, 3, 1) * _STD + _MEAN


def test_train_boxes_match_the_pixels(gradients):
    root, files = gradients
    labels = [10 * i for i in range(len(files))]
    pipe = build_train_pipeline(
        files, labels, batch_size=len(files), file_root=root, crop_size=32, seed=1, num_threads=2
    )
    mirrored_seen = set()
    for _ in range(6):
        images, indices, anchors, shapes, image_shapes, mirrors = (
            out.as_array() for out in pipe.run()
        )
        assert indices.reshape(-1).tolist() == labels
        assert images.shape == (len(files), 3, 32, 32) and images.dtype == np.float32
        assert image_shapes[:, :2].tolist() == [list(s) for s in SIZES]
        boxes = train_boxes(anchors, shapes, image_shapes)
        rgb = _rgb(images)
        for b, (x1, y1, x2, y2) in enumerate(boxes):
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            area = (x2 - x1) * (y2 - y1)
            assert 0.08 - 0.02 <= area <= 1.0
            assert abs(rgb[b, ..., 0].mean() - 255 * (x1 + x2) / 2) < 4
            assert abs(rgb[b, ..., 1].mean() - 255 * (y1 + y2) / 2) < 4
            left, right = rgb[b, :, :4, 0].mean(), rgb[b, :, -4:, 0].mean()
            assert (left > right) == bool(mirrors[b])  # a mirrored crop runs right to left
            top, bottom = rgb[b, :4, :, 1].mean(), rgb[b, -4:, :, 1].mean()
            assert top < bottom  # never flipped vertically
            mirrored_seen.add(bool(mirrors[b]))
    assert mirrored_seen == {True, False}


def test_eval_center_crop_boxes_match_the_pixels(gradients):
    root, files = gradients
    pipe = build_eval_pipeline(
        [str(root / f) for f in files], list(range(len(files))), batch_size=2, crop_size=32
    )
    seen = 0
    for _ in range(3):  # the last batch is smaller, nothing padded
        images, indices, image_shapes = (out.as_array() for out in pipe.run())
        boxes = center_crop_boxes(image_shapes, 32, default_resize_size(32))
        rgb = _rgb(images)
        for b, (x1, y1, x2, y2) in enumerate(boxes):
            assert abs((x1 + x2) / 2 - 0.5) < 1e-6 and abs((y1 + y2) / 2 - 0.5) < 1e-6
            assert abs(rgb[b, ..., 0].mean() - 127.5) < 4 and abs(rgb[b, ..., 1].mean() - 127.5) < 4
            # the crop's extent: the red range across the output equals the box's width
            spread = rgb[b, :, -1, 0].mean() - rgb[b, :, 0, 0].mean()
            assert abs(spread - 255 * (x2 - x1) * 31 / 32) < 6
            seen += 1
    assert seen == 5 and indices.reshape(-1).tolist() == [4]


def test_box_helpers():
    boxes = train_boxes(np.array([[10, 20]]), np.array([[50, 100]]), np.array([[100, 400, 3]]))
    np.testing.assert_allclose(boxes, [[20 / 400, 10 / 100, 120 / 400, 60 / 100]])
    # 200 x 400 image, shorter side to 73, 64 crop: 64/73 of the height, 32/73 of the width
    boxes = center_crop_boxes(np.array([[200, 400, 3]]), 64, 73)
    np.testing.assert_allclose(
        boxes, [[0.5 - 16 / 73, 0.5 - 32 / 73, 0.5 + 16 / 73, 0.5 + 32 / 73]]
    )
    assert default_resize_size(224) == 256


def test_bad_arguments():
    with pytest.raises(ValueError, match="files is empty"):
        build_train_pipeline([], [], batch_size=2)
    with pytest.raises(ValueError, match="labels must have one entry per file"):
        build_train_pipeline(["a.jpg"], [], batch_size=2)
    with pytest.raises(ValueError, match="dtype must be one of"):
        build_train_pipeline(["a.jpg"], [0], batch_size=2, dtype="int8")
    with pytest.raises(ValueError, match=r"resize_size \(10\) must be >= crop_size"):
        build_eval_pipeline(["a.jpg"], [0], batch_size=2, resize_size=10)
