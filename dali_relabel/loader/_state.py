"""A loader's place in its epochs, to resume an interrupted run (``state_dict``).

torchdata's ``StatefulDataLoader`` convention: ``state_dict()`` says where the loader
is (the epoch in progress and the batches it has yielded), ``load_state_dict()`` before
``iter()`` makes the next epoch continue there. A batch's samples, crops and flips depend
only on (seed, epoch, rank, batch) and on the dataset, batch size and sharding, so the
rest of the epoch is then exactly the batches the interrupted run would have yielded.
A state written under other values of those is refused: its batches would differ.

The state is the same on every rank apart from ``rank`` (ranks step in lockstep), so a
checkpoint that only rank 0 writes resumes every rank; ``rank`` is recorded, not checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from dali_relabel.errors import LoaderStateError

__all__ = ["STATE_VERSION", "check_state", "dataset_fingerprint"]

#: Version of the state's layout.
STATE_VERSION = 1
#: What a state must share with the loader that loads it (rank excepted, see above).
_MUST_MATCH = (
    "train",
    "seed",
    "world_size",
    "num_samples",
    "dataset",
    "batch_size",
    "drop_last",
    "shuffle",
    "even_shards",
)
# how to make a loader that matches, per key
_FIX = {
    "dataset": "the images under root changed since the state was saved",
    "num_samples": "the images under root changed since the state was saved",
}


def dataset_fingerprint(keys: Sequence[str]) -> str:
    """A short hash of the samples' keys in sample order (which files, in which order)."""
    digest = hashlib.blake2b(digest_size=8)
    for key in keys:
        digest.update(key.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def check_state(state: Any, identity: Mapping[str, Any], num_batches: int) -> tuple[int, int]:
    """The (epoch, first batch) that ``state`` resumes on the loader ``identity`` describes.

    Args:
        state: what ``state_dict()`` returned.
        identity: the loading loader's values of :data:`_MUST_MATCH` (and ``rank``).
        num_batches: batches per epoch of the loading loader.

    Raises:
        LoaderStateError: not a state, or one another loader wrote.
    """
    if not isinstance(state, Mapping):
        raise LoaderStateError(
            f"load_state_dict takes the dict that state_dict() returned, got {type(state).__name__}"
        )
    needed = ("version", "epoch", "batches_yielded", *_MUST_MATCH)
    missing = [key for key in needed if key not in state]
    if missing:
        raise LoaderStateError(
            f"the loader state lacks {', '.join(missing)}: load_state_dict takes the dict "
            "that ReLabelLoader.state_dict() returned"
        )
    if state["version"] != STATE_VERSION:
        raise LoaderStateError(
            f"the loader state has version {state['version']!r}; this dali_relabel reads "
            f"version {STATE_VERSION}"
        )
    differ = [key for key in _MUST_MATCH if state[key] != identity[key]]
    if differ:
        listed = "; ".join(
            f"{key}={state[key]!r} in the state, {identity[key]!r} here" for key in differ
        )
        hints = sorted({_FIX[k] for k in differ if k in _FIX})
        raise LoaderStateError(
            f"the loader state was saved by another loader ({listed}): its epoch would go "
            "on with other batches. Make the loader with the interrupted run's arguments"
            + (f" ({'; '.join(hints)})" if hints else "")
        )
    epoch, done = state["epoch"], state["batches_yielded"]
    if not _is_count(epoch):
        raise LoaderStateError(f"the loader state's epoch must be an int >= 0, got {epoch!r}")
    if not _is_count(done) or done > num_batches:
        raise LoaderStateError(
            f"the loader state's batches_yielded must be an int in [0, {num_batches}] "
            f"(batches per epoch), got {done!r}"
        )
    if done == num_batches:  # the epoch was over: the next one from its start
        return epoch + 1, 0
    return epoch, done


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
