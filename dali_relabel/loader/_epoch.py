"""The loader's epochs: one DALI pipeline per epoch, the next one started ahead.

Each epoch's pipeline runs through DALI's scheduled API (``schedule_run``/``outputs``)
for exactly the epoch's batches: ``run()`` would keep scheduling iterations past the last
batch, decoding samples only to drop them and making the shutdown wait for them. Once
the last batch of an epoch is scheduled, the next epoch's pipeline is built and starts
prefetching, so that an epoch does not begin with an empty queue; if the next epoch
asked for is another one (``set_epoch``), that pipeline is dropped. When DALI fails on a
file, the error names it (:func:`explain_decode_failure`). docs/LOADER.md ("Epochs and
shards, built by the loader").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dali_relabel.errors import ImageDecodeError
from dali_relabel.imagefolder import ImageFolderList, check_image_file
from dali_relabel.loader._label_maps import LabelMaps
from dali_relabel.loader._sampler import ShardSampler

__all__ = ["Epoch", "Epochs", "explain_decode_failure"]

#: Batches each epoch's DALI pipeline computes ahead (fewer when the epoch is shorter).
PREFETCH_DEPTH = 2

#: (sample indices, epoch, prefetch_queue_depth) -> a built DALI pipeline.
BuildPipeline = Callable[[np.ndarray, int, int], Any]
#: (outputs, expected sample indices, read-ahead maps or None, exec_dynamic) -> a batch.
Assemble = Callable[[Any, np.ndarray, Any, bool], tuple[torch.Tensor, ...]]


class Epochs:
    """Runs a loader's epochs; ``epochs.run(e, build)`` is the iterator of epoch ``e``.

    Args:
        sampler: the sample indices of each epoch; its ``epoch`` is the one that runs
            next, which is the one started ahead.
        assemble: makes a batch from one iteration's outputs (a BatchAssembler).
        label_maps: the samples' label maps, read ahead when they are streamed; None
            for hard targets.
        dataset: the samples, to name the file behind a DALI failure.
        batch_size: samples per batch.
        drop_last: leave out each epoch's last, smaller batch.
        seeded: the graph draws random crops per epoch; False (evaluation) lets a
            pipeline started for one epoch serve any epoch of the same order.
    """

    def __init__(
        self,
        sampler: ShardSampler,
        *,
        assemble: Assemble,
        label_maps: LabelMaps | None,
        dataset: ImageFolderList,
        batch_size: int,
        drop_last: bool,
        seeded: bool,
    ) -> None:
        self._sampler = sampler
        self._assemble = assemble
        self._label_maps = label_maps
        self._dataset = dataset
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._seeded = seeded
        self._ahead: _Run | None = None

    def num_batches(self, samples: int) -> int:
        """Batches that ``samples`` samples make."""
        if self._drop_last:
            return samples // self._batch_size
        return -(-samples // self._batch_size)

    def run(self, epoch: int, build: BuildPipeline) -> Epoch:
        """One pass over the sampler's indices of ``epoch``.

        Args:
            epoch: the epoch to run.
            build: builds the pipeline that reads given samples once (the loader's
                ``build_pipeline``, looked up per epoch); the next epoch, started ahead,
                is built with it too.
        """
        order = self._sampler.indices(epoch)
        ahead, self._ahead = self._ahead, None
        same_epoch = ahead is not None and (ahead.epoch == epoch or not self._seeded)
        if same_epoch and np.array_equal(ahead.order, order):
            run = ahead
        else:
            run = self._start(build, epoch, order)
        read_ahead = None
        if self._label_maps is not None:
            batch_size = self._batch_size
            read_ahead = self._label_maps.read_ahead(
                lambda batch: _span(order, batch, batch_size), run.total
            )
        return Epoch(
            run,
            self._batch_size,
            self._assemble,
            read_ahead,
            on_last_scheduled=lambda: self._start_ahead(build),
            explain=self._explain,
        )

    def _start(self, build: BuildPipeline, epoch: int, order: np.ndarray) -> _Run:
        return _Run(build, epoch, order, self.num_batches(len(order)))

    def _start_ahead(self, build: BuildPipeline) -> None:
        """Start the epoch that runs next while this one hands out its last batches."""
        if self._ahead is not None:
            return
        epoch = self._sampler.epoch
        try:
            self._ahead = self._start(build, epoch, self._sampler.indices(epoch))
        except Exception:  # the same error comes back when that epoch runs
            self._ahead = None

    def _explain(self, error: Exception, order: np.ndarray, batch: int) -> Exception:
        # DALI computes a few batches ahead: the failure may come from any of them.
        lo = batch * self._batch_size
        candidates = order[lo : lo + 5 * self._batch_size].tolist()
        return explain_decode_failure(self._dataset, candidates, str(error)) or error


class _Run:
    """A DALI pipeline that reads one epoch's samples, scheduled for exactly its batches."""

    def __init__(self, build: BuildPipeline, epoch: int, order: np.ndarray, total: int) -> None:
        self.epoch = epoch
        self.order = order
        self.total = total
        self.pipe = None
        self.scheduled = 0
        if total:
            # The first schedule_run() runs the queue's whole depth: no deeper than the
            # epoch, or a 1-batch epoch would decode a second batch only to drop it.
            depth = min(PREFETCH_DEPTH, total)
            self.pipe = build(order, epoch, depth)
            self.pipe.schedule_run()
            self.scheduled = depth

    def outputs(self) -> Any:
        outputs = self.pipe.outputs()
        if self.scheduled < self.total:
            self.pipe.schedule_run()
            self.scheduled += 1
        return outputs


def _span(order: np.ndarray, batch: int, batch_size: int) -> np.ndarray:
    return order[batch * batch_size : (batch + 1) * batch_size]


class Epoch:
    """The iterator of one epoch's batches; what ``iter(loader)`` returns."""

    def __init__(
        self,
        run: _Run,
        batch_size: int,
        assemble: Assemble,
        read_ahead: Any,
        *,
        on_last_scheduled: Callable[[], None],
        explain: Callable[[Exception, np.ndarray, int], Exception],
    ) -> None:
        self._run: _Run | None = run
        self._order = run.order
        self._total = run.total
        self._batch_size = batch_size
        self._assemble = assemble
        self._read_ahead = read_ahead
        self._on_last_scheduled = on_last_scheduled
        self._explain = explain
        self._next = 0

    def __iter__(self) -> Epoch:
        return self

    def __len__(self) -> int:
        return self._total - self._next

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._next >= self._total or self._run is None:
            self._run = None
            raise StopIteration
        batch, run = self._next, self._run
        try:
            outputs = run.outputs()
        except RuntimeError as e:
            self._run, self._next = None, self._total  # a failed DALI pipeline is dead
            raise self._explain(e, self._order, batch) from e
        self._next += 1
        if run.scheduled == self._total:
            self._on_last_scheduled()
        maps = None if self._read_ahead is None else self._read_ahead.pop()
        span = _span(self._order, batch, self._batch_size)
        return self._assemble(outputs, span, maps, run.pipe.exec_dynamic)


def explain_decode_failure(
    dataset: ImageFolderList, candidates: Sequence[int], message: str
) -> ImageDecodeError | None:
    """An error naming the undecodable files among samples ``candidates``, if any.

    DALI names the file in some of its errors (a truncated JPEG) and not in others (a
    file that is not an image); the candidates are checked where it does not.

    Args:
        dataset: the samples.
        candidates: sample indices that a failed DALI batch may hold.
        message: DALI's error message.
    """
    rel = dataset.relative_paths()
    bad = [(i, "") for i in candidates if rel[i] in message]
    if not bad:
        bad = [(i, r) for i in candidates if (r := check_image_file(dataset.paths[i]))]
    if not bad:
        return None
    i, reason = bad[0]
    more = f" and {len(bad) - 1} more in the same batches" if len(bad) > 1 else ""
    detail = reason or message.strip().splitlines()[-1]
    return ImageDecodeError(
        f"cannot decode image {dataset.paths[i]} ({detail}){more}. Remove or replace it, or "
        "pass on_bad_image='skip' to check every file at construction and leave out the "
        "ones that fail"
    )
