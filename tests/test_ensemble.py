"""`dali-relabel ensemble`: against a float64 reference, grid resampling, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dali_relabel.cli import main
from dali_relabel.labelmaps import densify, ensemble_label_maps, resample
from dali_relabel.ops.label_pooling import label_pooling
from dali_relabel.store import LabelMapStore, LabelMapWriter

C = 20
KEYS = [f"n{c:08d}/img_{i}" for c in range(2) for i in range(5)]


def _random_maps(n, k, grid, seed, kind="logits"):
    rng = np.random.default_rng(seed)
    cells = n * grid[0] * grid[1]
    classes = np.stack([rng.choice(C, k, replace=False) for _ in range(cells)])
    classes = classes.reshape(n, *grid, k).transpose(0, 3, 1, 2)
    scores = -np.sort(-rng.normal(2, 3, (n, k, *grid)), axis=1)
    if kind == "probabilities":
        scores = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True) * 0.9
    return scores.astype(np.float32), classes.astype(np.int64)


def _write(
    path, scores, classes, *, keys=KEYS, kind="logits", names=None, shard_size=4, provenance=None
):
    writer = LabelMapWriter.create(
        path,
        keys,
        num_classes=C if names is None else len(names),
        k=scores.shape[1],
        grid=scores.shape[2:],
        score_dtype="float32",
        score_kind=kind,
        class_names=names,
        provenance=provenance or {"teacher": path.stem},
        shard_size=shard_size,
    )
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    return writer.finalize()


def _bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of bilinear resampling with align_corners=False, in float64."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(math.floor(src), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        w[i, lo] += 1 - frac
        w[i, hi] += frac
    return w


def _reference(maps, grid, kind):
    """Mean of densified (missing classes 0), converted and resampled maps, in float64 loops,
    with -inf where no input ranks the class in the cell (never chosen over a ranked one)."""
    total = np.zeros((len(KEYS), C, *grid))
    ranked = np.zeros((len(KEYS), C, *grid), dtype=bool)
    for scores, classes, stored_kind in maps:
        n, k, h, w = scores.shape
        dense = np.zeros((n, C, h, w))
        listed = np.zeros((n, C, h, w))
        for b in range(n):
            for j in range(k):
                for y in range(h):
                    for x in range(w):
                        dense[b, classes[b, j, y, x], y, x] += scores[b, j, y, x]
                        listed[b, classes[b, j, y, x], y, x] = 1.0
        if kind == "probabilities" and stored_kind == "logits":
            e = np.exp(dense - dense.max(axis=1, keepdims=True))
            dense = e / e.sum(axis=1, keepdims=True)
        wy, wx = _bilinear_weights(h, grid[0]), _bilinear_weights(w, grid[1])
        total += np.einsum("yh,bchw,xw->bcyx", wy, dense, wx)
        ranked |= np.einsum("yh,bchw,xw->bcyx", wy, listed, wx) > 0
    return np.where(ranked, total / len(maps), -np.inf)


def _check_against(out, want, k):
    scores, classes = out.read(np.arange(len(out)))
    order = np.argsort(-want, axis=1, kind="stable")
    top = np.take_along_axis(want, order[:, :k], axis=1)
    top = np.where(np.isinf(top), 0.0, top)  # fewer than k ranked classes: unranked at 0
    np.testing.assert_allclose(scores, top, rtol=1e-5, atol=1e-5)
    # Classes must agree wherever the reference has no tie at the k-th place.
    sorted_all = np.take_along_axis(want, order, axis=1)
    clear = np.abs(sorted_all[:, k - 1] - sorted_all[:, k]) > 1e-4
    got = np.take_along_axis(want, classes.astype(np.int64), axis=1)
    got = np.where(np.isinf(got), 0.0, got)
    np.testing.assert_allclose(got, top, atol=1e-5)  # the chosen classes hold those scores
    assert clear.mean() > 0.9


@pytest.mark.parametrize("kind", ["logits", "probabilities"])
def test_ensemble_of_two_grids_equals_float64_reference(tmp_path, kind):
    a = _random_maps(len(KEYS), 3, (4, 4), seed=0)
    b = _random_maps(len(KEYS), 5, (6, 5), seed=1)
    sa, sb = _write(tmp_path / "a.zarr", *a), _write(tmp_path / "b.zarr", *b)
    out = ensemble_label_maps(
        [sa, sb], tmp_path / f"e_{kind}.zarr", scores=kind, k=4, progress=False
    )
    assert out.grid == (6, 5) and out.k == 4 and out.score_kind == kind
    assert out.keys == tuple(KEYS)
    want = _reference([(*a, "logits"), (*b, "logits")], (6, 5), kind)
    _check_against(out, want, 4)
    prov = out.provenance
    assert prov["ensemble"] == f"mean of {kind} per cell"
    assert [i["teacher"] for i in prov["inputs"]] == ["a", "b"]


def test_explicit_grid_and_probability_stores(tmp_path):
    a = _random_maps(len(KEYS), 3, (4, 4), seed=2, kind="probabilities")
    b = _random_maps(len(KEYS), 3, (3, 3), seed=3)
    sa = _write(tmp_path / "a.zarr", *a, kind="probabilities")
    sb = _write(tmp_path / "b.zarr", *b)
    out = ensemble_label_maps([sa, sb], tmp_path / "e.zarr", grid=(8, 8), progress=False)
    assert out.score_kind == "probabilities" and out.grid == (8, 8) and out.k == 3
    want = _reference([(*a, "probabilities"), (*b, "logits")], (8, 8), "probabilities")
    _check_against(out, want, 3)
    with pytest.raises(ValueError, match="holds probabilities, which cannot be averaged as logits"):
        ensemble_label_maps([sa, sb], tmp_path / "f.zarr", scores="logits", progress=False)


def test_resample_matches_torch_and_keeps_constants():
    dense = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    got = resample(dense, (7, 3))
    want = torch.einsum(
        "yh,bchw,xw->bcyx",
        torch.from_numpy(_bilinear_weights(4, 7)),
        dense,
        torch.from_numpy(_bilinear_weights(5, 3)),
    )
    torch.testing.assert_close(got, want)
    flat = torch.full((1, 1, 3, 3), 2.5, dtype=torch.float64)
    torch.testing.assert_close(
        resample(flat, (15, 15)), torch.full((1, 1, 15, 15), 2.5, dtype=torch.float64)
    )


def test_same_grid_logit_ensemble_pools_to_the_mean_of_pooled_maps(tmp_path):
    # Missing classes at 0, as LabelPooling: pooling the ensemble (all classes kept) equals
    # the mean of the teachers' pooled maps.
    a = _random_maps(len(KEYS), 3, (5, 5), seed=4)
    b = _random_maps(len(KEYS), 3, (5, 5), seed=5)
    sa, sb = _write(tmp_path / "a.zarr", *a), _write(tmp_path / "b.zarr", *b)
    out = ensemble_label_maps([sa, sb], tmp_path / "e.zarr", k=C, progress=False)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9]] * len(KEYS), dtype=torch.float64)
    idx = np.arange(len(KEYS))

    def pooled(store):
        s, c = store.read_torch(idx)
        return label_pooling(s.double(), c, boxes, C)

    torch.testing.assert_close(pooled(out), (pooled(sa) + pooled(sb)) / 2, atol=1e-5, rtol=1e-5)


def test_densify_puts_scores_at_their_classes():
    scores = torch.tensor([[[[3.0]], [[1.5]]]])
    classes = torch.tensor([[[[4]], [[1]]]])
    dense = densify(scores, classes, 6)
    assert dense[0, :, 0, 0].tolist() == [0, 1.5, 0, 0, 3.0, 0]


def test_refuses_stores_of_other_images_or_classes(tmp_path):
    a = _random_maps(len(KEYS), 3, (4, 4), seed=0)
    sa = _write(tmp_path / "a.zarr", *a)
    other_keys = [*KEYS[:-1], "n00000001/img_99"]
    sb = _write(tmp_path / "b.zarr", *a, keys=other_keys)
    with pytest.raises(
        ValueError,
        match=r"label different images: 1 only in .*a\.zarr.* \(first: "
        r"n00000001/img_4\); 1 only in .*b\.zarr.* \(first: n00000001/img_99\)",
    ):
        ensemble_label_maps([sa, sb], tmp_path / "e.zarr", progress=False)
    names = [f"c{i}" for i in range(C)]
    sc = _write(tmp_path / "c.zarr", *a, names=names)
    with pytest.raises(ValueError, match="one records class names and the other does not"):
        ensemble_label_maps([sa, sc], tmp_path / "e.zarr", progress=False)
    sd = _write(tmp_path / "d.zarr", *a, names=[*names[:-1], "zzz"])
    with pytest.raises(ValueError, match="class 19 is 'c19' in one and 'zzz' in the other"):
        ensemble_label_maps([sc, sd], tmp_path / "e.zarr", progress=False)
    se = _write(tmp_path / "e5.zarr", *a, names=[*names, "extra"])
    with pytest.raises(ValueError, match="have 20 and 21 classes"):
        ensemble_label_maps([sc, se], tmp_path / "e.zarr", progress=False)


def test_cli(tmp_path, capsys):
    a = _random_maps(len(KEYS), 3, (4, 4), seed=0)
    b = _random_maps(len(KEYS), 3, (4, 4), seed=1)
    _write(tmp_path / "a.zarr", *a)
    _write(tmp_path / "b.zarr", *b)
    out = tmp_path / "e.zarr"
    args = ["ensemble", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), str(out)]
    assert main([*args, "--grid", "5", "5", "--topk", "2", "--quiet"]) == 0
    assert "mean of logits per cell of 2 stores" in capsys.readouterr().out
    store = LabelMapStore.open(out)
    assert store.grid == (5, 5) and store.k == 2
    _write(tmp_path / "c.zarr", *a, keys=[*KEYS[:-1], "x/y"])
    assert (
        main(
            [
                "ensemble",
                str(tmp_path / "a.zarr"),
                str(tmp_path / "c.zarr"),
                str(tmp_path / "f.zarr"),
            ]
        )
        == 1
    )
    assert "dali-relabel ensemble: error: stores" in capsys.readouterr().err


def test_provenance_records_each_inputs_weights_and_resolution(tmp_path):
    a = _random_maps(len(KEYS), 3, (4, 4), seed=0)
    b = _random_maps(len(KEYS), 3, (4, 4), seed=1)
    one = {"teacher": "r50", "weights": "r50.pth", "weights_sha256": "aa" * 32, "resolution": 128}
    # A generate ensemble records weights and resolutions per teacher, under "teachers".
    members = [{**one, "teacher": "x"}, {**one, "teacher": "y", "resolution": 96}]
    two = {"teacher": "x + y", "teachers": members}
    sa = _write(tmp_path / "a.zarr", *a, provenance=one)
    sb = _write(tmp_path / "b.zarr", *b, provenance=two)
    inputs = ensemble_label_maps([sa, sb], tmp_path / "e.zarr", progress=False).provenance["inputs"]
    assert [i["teacher"] for i in inputs] == ["r50", "x + y"]
    first = inputs[0]
    assert (first["weights"], first["weights_sha256"], first["resolution"]) == (
        "r50.pth",
        "aa" * 32,
        128,
    )
    assert (first["k"], first["grid"]) == (3, [4, 4])
    assert [t["resolution"] for t in inputs[1]["teachers"]] == [128, 96]


def test_rerun_from_another_folder_resumes_the_same_ensemble(tmp_path, monkeypatch):
    _write(tmp_path / "a.zarr", *_random_maps(len(KEYS), 3, (4, 4), seed=0))
    _write(tmp_path / "b.zarr", *_random_maps(len(KEYS), 3, (4, 4), seed=1))
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    first = ensemble_label_maps(["a.zarr", "b.zarr"], "e.zarr", progress=False)
    assert first.provenance["inputs"][0]["path"] == str(tmp_path / "a.zarr")
    monkeypatch.chdir(tmp_path / "sub")  # the same inputs, named from elsewhere
    again = ensemble_label_maps(["../a.zarr", "../b.zarr"], "../e.zarr", progress=False)
    np.testing.assert_array_equal(again.tables()[1], first.tables()[1])


@pytest.mark.parametrize("score_dtype", ["float32", "float16"])
def test_the_ensemble_of_a_store_with_itself_is_that_store(tmp_path, score_dtype):
    # Negative top-k logits used to lose to classes outside the top-k counted as 0.
    scores, classes = _random_maps(len(KEYS), 5, (6, 6), seed=7)
    assert (scores < 0).mean() > 0.2
    writer = LabelMapWriter.create(
        tmp_path / "a.zarr",
        KEYS,
        num_classes=C,
        k=5,
        grid=(6, 6),
        score_dtype=score_dtype,
        shard_size=4,
    )
    for start, stop in writer.missing_blocks():
        writer.write_block(start, scores[start:stop], classes[start:stop])
    a = writer.finalize()
    for inputs in ([a, a], [a, a, a]):
        out = ensemble_label_maps(inputs, tmp_path / f"e{len(inputs)}.zarr", progress=False)
        assert (out.k, out.grid, out.score_dtype) == (a.k, a.grid, a.score_dtype)
        for got, want in zip(out.tables(), a.tables(), strict=True):
            np.testing.assert_array_equal(got, want)
