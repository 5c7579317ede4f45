"""The RandomResizedCrop window, in the DALI graph and on the host, against torchvision's.

Both implementations (the graph's :func:`rrc_window` and the host's :func:`rrc_windows`,
which the report draws its crops with) against two references: torchvision's own
``RandomResizedCrop.get_params``, run with its random draws recorded and the same draws
fed to both; and a float64 transcription of it driven by the loader's host draws, over
thousands of windows on image shapes from tiny to panoramic, so that the central
fallback (no attempt fits) is exercised too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nvidia.dali import fn, pipeline_def, types
from torchvision.transforms import RandomResizedCrop

from dali_relabel._rrc import ATTEMPTS, batch_generator, crop_inputs, draw_crops, rrc_windows
from dali_relabel.loader._crops import rrc_window

BATCH = 256


def _window_pipeline(ratio_range):
    """rrc_window on fed image shapes and draws; outputs (anchors, shapes)."""

    @pipeline_def(batch_size=BATCH, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def graph():
        shapes = fn.external_source(name="image_shapes", dtype=types.INT64, ndim=1)
        attempts = fn.external_source(name="attempts", dtype=types.FLOAT64, ndim=2)
        position = fn.external_source(name="position", dtype=types.FLOAT64, ndim=1)
        return rrc_window(shapes, attempts, position, ratio_range)

    pipe = graph()
    pipe.build()
    return pipe


def _windows(pipe, shapes, area, ratio, position, ratio_range) -> np.ndarray:
    """(i, j, h, w) per sample, as get_params returns them, from the graph; the host's
    :func:`rrc_windows` must give the same windows."""
    pipe.feed_input("image_shapes", np.asarray(shapes, dtype=np.int64))
    inputs = crop_inputs({"area": area, "ratio": ratio, "position": position, "mirror": None})
    pipe.feed_input("attempts", inputs["attempts"])
    pipe.feed_input("position", np.asarray(position, dtype=np.float64))
    anchors, sizes = (o.as_array() for o in pipe.run())
    graph = np.concatenate([anchors, sizes], axis=1).astype(np.int64)
    host = np.concatenate(rrc_windows(shapes, inputs["attempts"], position, ratio_range), axis=1)
    np.testing.assert_array_equal(host, graph)
    return graph


def _shapes(rng, n) -> np.ndarray:
    """(H, W, 3): mostly photo-like, some tiny, some far wider or taller than 4:3."""
    h = rng.integers(1, 900, n)
    w = (h * np.exp(rng.uniform(-2.5, 2.5, n))).astype(np.int64).clip(1, 5000)
    return np.stack([h, w, np.full(n, 3)], axis=1)


def reference_get_params(height, width, area, ratio, position, ratio_range):
    """torchvision's RandomResizedCrop.get_params in float64, its draws given:
    ``area[t]`` for ``uniform_(*scale)``, ``ratio[t]`` for ``exp(uniform_(*log(ratio)))``,
    ``position`` for the two ``randint`` (uniforms scaled to the range)."""
    total = height * width
    for t in range(ATTEMPTS):
        target_area = total * area[t]
        aspect_ratio = ratio[t]
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = math.floor(position[0] * (height - h + 1))
            j = math.floor(position[1] * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio_range):
        w = width
        h = round(w / min(ratio_range))
    elif in_ratio > max(ratio_range):
        h = height
        w = round(h * max(ratio_range))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    ("scale", "ratio_range"),
    [((0.08, 1.0), (3 / 4, 4 / 3)), ((0.25, 1.0), (0.5, 2.0)), ((0.9, 3.0), (3 / 4, 4 / 3))],
)
def test_window_is_the_float64_reference_on_host_draws(scale, ratio_range):
    """Thousands of windows with the loader's own draws; (0.9, 3.0) makes most attempts
    too large, so the first fitting attempt is often a late one or none (the fallback)."""
    pipe = _window_pipeline(ratio_range)
    rng = np.random.default_rng(0)
    fallbacks = late = 0
    for batch in range(8):
        shapes = _shapes(rng, BATCH)
        draws = draw_crops(batch_generator(7, 0, 0, batch), BATCH, scale, ratio_range)
        got = _windows(pipe, shapes, draws["area"], draws["ratio"], draws["position"], ratio_range)
        for k in range(BATCH):
            height, width = int(shapes[k, 0]), int(shapes[k, 1])
            want = reference_get_params(
                height, width, draws["area"][k], draws["ratio"][k], draws["position"][k],
                ratio_range,
            )  # fmt: skip
            assert tuple(got[k]) == want, (height, width, k)
            i, j, h, w = want
            assert 0 <= i <= height - h and 0 <= j <= width - w
            first = _first_fit(height, width, draws["area"][k], draws["ratio"][k])
            fallbacks += first is None
            late += first is not None and first > 0
    assert fallbacks >= 20 and late >= 20  # both paths exercised


def _first_fit(height, width, area, ratio):
    for t in range(ATTEMPTS):
        w = round(math.sqrt(height * width * area[t] * ratio[t]))
        h = round(math.sqrt(height * width * area[t] / ratio[t]))
        if 0 < w <= width and 0 < h <= height:
            return t
    return None


def test_window_is_torchvisions_get_params_given_its_draws(monkeypatch):
    """torchvision's get_params itself, with its random draws recorded and fed to the graph."""
    draws: list[tuple[str, float]] = []
    uniform, randint = torch.Tensor.uniform_, torch.randint

    def recording_uniform(self, *args, **kwargs):
        out = uniform(self, *args, **kwargs)
        draws.append(("uniform", out.clone()))
        return out

    def recording_randint(low, high, *args, **kwargs):
        out = randint(low, high, *args, **kwargs)
        draws.append(("randint", (int(out.item()), int(high))))
        return out

    monkeypatch.setattr(torch.Tensor, "uniform_", recording_uniform)
    monkeypatch.setattr(torch, "randint", recording_randint)
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    shapes = _shapes(rng, BATCH)
    scale, ratio_range = (0.08, 1.0), (3 / 4, 4 / 3)
    area = rng.uniform(0, 1, (BATCH, ATTEMPTS))  # attempts torchvision never drew: any value
    ratio = np.ones((BATCH, ATTEMPTS))
    position = np.zeros((BATCH, 2))
    expected, fallbacks = [], 0
    for k, (height, width, _) in enumerate(shapes.tolist()):
        draws.clear()
        image = torch.empty(3, height, width)
        expected.append(RandomResizedCrop.get_params(image, list(scale), list(ratio_range)))
        uniforms = [v for kind, v in draws if kind == "uniform"]
        for t in range(len(uniforms) // 2):  # (area, log ratio) per attempt drawn
            area[k, t] = uniforms[2 * t].item()
            ratio[k, t] = torch.exp(uniforms[2 * t + 1]).item()  # float32, as get_params
        placed = [v for kind, v in draws if kind == "randint"]
        fallbacks += not placed
        for axis, (value, high) in enumerate(placed):
            position[k, axis] = (value + 0.5) / high  # floor(u * high) == value
    monkeypatch.undo()
    got = _windows(_window_pipeline(ratio_range), shapes, area, ratio, position, ratio_range)
    assert [tuple(row) for row in got.tolist()] == [tuple(e) for e in expected]
    assert 5 <= fallbacks <= BATCH - 100  # both the attempts and the central fallback


def test_draws_depend_on_seed_epoch_rank_and_batch_only():
    def draws(*key):
        return draw_crops(batch_generator(*key), 16, (0.08, 1.0), (3 / 4, 4 / 3))

    a = draws(3, 1, 0, 5)
    for name, value in draws(3, 1, 0, 5).items():  # a fresh generator: the same draws
        np.testing.assert_array_equal(value, a[name])
    for other in [(4, 1, 0, 5), (3, 2, 0, 5), (3, 1, 1, 5), (3, 1, 0, 6)]:
        assert not np.array_equal(draws(*other)["area"], a["area"])
    assert a["area"].shape == (16, ATTEMPTS) and a["mirror"].dtype == np.int32
    assert a["area"].min() >= 0.08 and a["area"].max() < 1.0
    assert a["ratio"].min() >= 3 / 4 and a["ratio"].max() <= 4 / 3
    assert set(np.unique(a["mirror"]).tolist()) <= {0, 1}
