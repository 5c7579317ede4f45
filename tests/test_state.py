"""Resuming an interrupted epoch: ReLabelLoader.state_dict / load_state_dict.

An uninterrupted run is the reference: a loader that stopped after n batches hands its
state (through JSON, as a checkpoint would) to a new loader, whose rest of the epoch must
be the reference's batches n.. exactly: the sample indices and crop windows DALI was
given and returned, the mirror flags, the images' pixels and the soft targets, on the
real photos with their label maps, on rank 1 of 2.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dali_relabel import ReLabelLoader
from dali_relabel.errors import LoaderStateError
from dali_relabel.loader import TRAIN_OUTPUTS

ARGS = {
    "batch_size": 6,
    "crop_size": 48,
    "num_threads": 2,
    "seed": 11,
    "rank": 1,
    "world_size": 2,
    "targets": "both",
}  # 40 photos, 20 on rank 1: batches of 6, 6, 6, 2


class _Windows:
    """The outputs (images left out) of every DALI iteration the loader takes, through
    its public build_pipeline."""

    def __init__(self, loader, monkeypatch):
        self.taken: list[dict[str, np.ndarray]] = []
        build = loader.build_pipeline

        def spying(**kwargs):
            pipe = build(**kwargs)
            outputs = pipe.outputs

            def taking(*args, **kw):
                out = outputs(*args, **kw)
                named = dict(zip(TRAIN_OUTPUTS, out, strict=True))
                self.taken.append(
                    {n: np.array(o.as_array()) for n, o in named.items() if n != "images"}
                )
                return out

            pipe.outputs = taking
            return pipe

        monkeypatch.setattr(loader, "build_pipeline", spying)


def _loader(sample_data, sample_store, **kwargs):
    return ReLabelLoader(sample_data.train, sample_store.path, **{**ARGS, **kwargs})


def _assert_same_batches(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def _assert_same_windows(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_resumed_epoch_is_the_rest_of_the_uninterrupted_one(sample_data, sample_store, monkeypatch):
    reference = _loader(sample_data, sample_store)
    windows = _Windows(reference, monkeypatch)
    reference.set_epoch(3)
    uninterrupted = list(reference)
    assert len(uninterrupted) == 4
    reference_windows = windows.taken[:4]

    interrupted = _loader(sample_data, sample_store)
    for _ in interrupted:  # an earlier epoch, then two batches of epoch 3
        pass
    interrupted.set_epoch(3)
    batches = iter(interrupted)
    _assert_same_batches([next(batches), next(batches)], uninterrupted[:2])
    state = json.loads(json.dumps(interrupted.state_dict()))  # what a checkpoint holds
    assert (state["epoch"], state["batches_yielded"]) == (3, 2)
    del batches, interrupted

    resumed = _loader(sample_data, sample_store)
    windows = _Windows(resumed, monkeypatch)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    resumed.set_epoch(3)  # what a trainer's loop calls again: the resume holds
    rest = list(resumed)
    _assert_same_batches(rest, uninterrupted[2:])
    _assert_same_windows(windows.taken[:2], reference_windows[2:])
    assert not np.array_equal(reference_windows[2]["anchors"], reference_windows[3]["anchors"])
    # and the epochs after it are the uninterrupted run's
    _assert_same_batches(list(resumed), list(reference))


def test_state_between_epochs_and_before_the_first(sample_data, sample_store):
    loader = _loader(sample_data, sample_store)
    assert (loader.state_dict()["epoch"], loader.state_dict()["batches_yielded"]) == (0, 0)
    loader.set_epoch(5)
    assert loader.state_dict()["epoch"] == 5
    for _ in loader:
        pass
    state = loader.state_dict()  # epoch 5 is over: epoch 6 from its start
    assert (state["epoch"], state["batches_yielded"]) == (6, 0)
    after = _loader(sample_data, sample_store)
    after.load_state_dict({**state, "epoch": 5, "batches_yielded": len(after)})
    assert after.state_dict() == state  # an epoch's last batch yielded is the next epoch
    assert after.state_dict()["rank"] == 1


def test_a_state_saved_by_rank_0_resumes_rank_1(sample_data, sample_store):
    rank0 = _loader(sample_data, sample_store, rank=0)
    next(iter(rank0))
    rank1 = _loader(sample_data, sample_store)
    rank1.load_state_dict(rank0.state_dict())  # ranks step in lockstep: one checkpoint
    assert len(list(rank1)) == len(rank1) - 1


def test_set_epoch_to_another_epoch_after_loading_starts_it_from_its_beginning(
    sample_data, sample_store
):
    loader = _loader(sample_data, sample_store)
    loader.load_state_dict({**loader.state_dict(), "epoch": 2, "batches_yielded": 3})
    loader.set_epoch(4)
    with pytest.warns(UserWarning, match="resumes epoch 2 at batch 3, but epoch 4 was set"):
        assert len(list(loader)) == len(loader)


def test_states_of_other_loaders_are_refused(sample_data, sample_store, tmp_path):
    state = _loader(sample_data, sample_store).state_dict()
    for kwargs, message in [
        ({"seed": 12}, r"seed=11 in the state, 12 here"),
        ({"world_size": 4, "rank": 1}, r"world_size=2 in the state, 4 here"),
        ({"batch_size": 8}, r"batch_size=6 in the state, 8 here"),
        ({"drop_last": True}, r"drop_last=False in the state, True here"),
    ]:
        with pytest.raises(LoaderStateError, match=message):
            _loader(sample_data, sample_store, **kwargs).load_state_dict(state)
    # another dataset: one image fewer
    fewer = tmp_path / "train"
    for path in sample_data.train.glob("*/*.JPEG"):
        if path.name != "n02124075_0.JPEG":
            (fewer / path.parent.name).mkdir(parents=True, exist_ok=True)
            (fewer / path.parent.name / path.name).write_bytes(path.read_bytes())
    other = ReLabelLoader(fewer, sample_store.path, **ARGS)
    with pytest.raises(LoaderStateError, match=r"num_samples=40 in the state, 39 here.*changed"):
        other.load_state_dict(state)
    loader = _loader(sample_data, sample_store)
    with pytest.raises(LoaderStateError, match="lacks epoch"):
        loader.load_state_dict({k: v for k, v in state.items() if k != "epoch"})
    with pytest.raises(LoaderStateError, match="has version 7"):
        loader.load_state_dict({**state, "version": 7})
    with pytest.raises(LoaderStateError, match=r"batches_yielded must be an int in \[0, 4\]"):
        loader.load_state_dict({**state, "batches_yielded": 5})
    with pytest.raises(LoaderStateError, match="takes the dict that state_dict"):
        loader.load_state_dict([state])
