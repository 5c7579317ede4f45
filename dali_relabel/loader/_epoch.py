"""The loader's epochs: one DALI pipeline for all of them, fed a batch at a time.

The pipeline is built at the first epoch and kept. Each batch is handed to it by name
(file paths, sample indices, crop draws: :meth:`LoaderGraph.inputs`) before the
``schedule_run()`` that computes it, :data:`PREFETCH_DEPTH` batches ahead of the one the
trainer takes. The feed runs on across an epoch's end: while the trainer takes the last
batches of epoch ``e``, DALI already computes the first ones of the epoch that runs next,
so an epoch does not begin with an empty queue. When the next ``iter()`` asks for other
batches (``set_epoch``, a resumed state, an epoch broken off early), the batches in flight
are taken from DALI and dropped: at most the queue's depth, never a new pipeline.

Nothing here refers to an epoch's iterator: an :class:`Epoch` refers to the loader's
:class:`Epochs` and not the other way round, so an abandoned iterator is freed as soon as
it is dropped (no reference cycle, no garbage collection needed). When DALI fails on a
file, the error names it (:func:`explain_decode_failure`). docs/LOADER.md ("Epochs").
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from dali_relabel.errors import ImageDecodeError
from dali_relabel.imagefolder import ImageFolderList, check_image_file
from dali_relabel.loader._graph import LoaderGraph
from dali_relabel.loader._label_maps import LabelMaps
from dali_relabel.loader._sampler import ShardSampler

__all__ = ["PREFETCH_DEPTH", "Epoch", "Epochs", "explain_decode_failure"]

#: Batches the pipeline computes ahead of the one the trainer takes.
PREFETCH_DEPTH = 2

#: prefetch_queue_depth -> the built DALI pipeline of the loader.
BuildPipeline = Callable[[int], Any]
#: (outputs, expected sample indices, maps or None, exec_dynamic, mixing or None) -> a batch.
Assemble = Callable[[Any, np.ndarray, Any, bool, Any], tuple[torch.Tensor, ...]]
#: (epoch, batch, samples) -> the batch's mixing (drawn when it is fed).
DrawMix = Callable[[int, int, int], Any]


@dataclasses.dataclass
class _Fed:
    """A batch handed to DALI and not yet taken."""

    key: tuple[int, int]  # (epoch, or 0 where the epoch changes nothing; batch)
    indices: np.ndarray
    maps: cf.Future | None
    mix: Any = None  # the batch's mixing (MixParams), drawn when it was fed


class Epochs:
    """The loader's run state: its pipeline and the batches in flight; ``run(e)`` is the
    iterator of epoch ``e``.

    Args:
        sampler: the sample indices of each epoch; its ``epoch`` is the one that runs
            after the current one, the one fed ahead.
        graph: the loader's graph (a batch's inputs).
        build: builds the loader's pipeline (the loader's ``build_pipeline``).
        assemble: makes a batch from one iteration's outputs (a BatchAssembler).
        label_maps: the samples' label maps, read on a thread when streamed; None for
            hard targets.
        dataset: the samples, to name the file behind a DALI failure.
        batch_size: samples per batch.
        drop_last: leave out each epoch's last, smaller batch.
        epoch_free: the batches do not depend on the epoch (evaluation without shuffle):
            the batches fed ahead for one epoch serve any epoch.
        draw_mix: draws a training batch's mixing when it is fed (the graph pastes
            CutMix boxes, the assembler blends and mixes targets); None without mixing.
    """

    def __init__(
        self,
        sampler: ShardSampler,
        *,
        graph: LoaderGraph,
        build: BuildPipeline,
        assemble: Assemble,
        label_maps: LabelMaps | None,
        dataset: ImageFolderList,
        batch_size: int,
        drop_last: bool,
        epoch_free: bool,
        draw_mix: DrawMix | None = None,
    ) -> None:
        self._sampler = sampler
        self._graph = graph
        self._build = build
        self._assemble = assemble
        self._label_maps = label_maps
        self._dataset = dataset
        self._batch_size = batch_size
        self._epoch_free = epoch_free
        self._draw_mix = draw_mix
        samples = len(sampler)
        #: Batches per epoch (the same every epoch).
        self.num_batches = samples // batch_size if drop_last else -(-samples // batch_size)
        #: The pipeline's batch size: no larger than the shard, nothing decoded as padding.
        self.pipeline_batch_size = max(1, min(batch_size, samples))
        self._pipe: Any = None
        self._started = False  # the pipeline's first schedule_run() fills its whole queue
        self._fed: collections.deque[_Fed] = collections.deque()
        self._cursor = (0, 0)  # (epoch, batch) fed next
        self._running = -1  # the epoch of the latest run()
        self._orders: dict[int, np.ndarray] = {}
        self._generation = 0  # counts run(): an older iterator is over
        #: (epoch, batches yielded) of the latest epoch started; None before the first.
        self.progress: tuple[int, int] | None = None

    def run(self, epoch: int, start: int = 0) -> Epoch:
        """The iterator of ``epoch`` from its batch ``start`` (0 unless resuming)."""
        self._generation += 1
        self._running = epoch
        self.progress = (epoch, start)
        if start < self.num_batches:
            self._position(epoch, start)
        return Epoch(self, self._generation, epoch, start)

    # -- feeding ------------------------------------------------------------------------
    def _key(self, epoch: int, batch: int) -> tuple[int, int]:
        return (0 if self._epoch_free else epoch, batch)

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 3:  # the running epoch and the one fed ahead suffice
                self._orders.pop(next(iter(self._orders)))
            self._orders[epoch] = self._sampler.indices(epoch)
        return self._orders[epoch]

    def _position(self, epoch: int, start: int) -> None:
        """Make the batch in flight first be ``start`` of ``epoch``; fill the queue."""
        if self._fed and self._fed[0].key == self._key(epoch, start):
            return  # fed ahead: the batches in flight are this epoch's
        self._drain()
        self._cursor = (epoch, start)
        self._fill()

    def _drain(self) -> None:
        """Take the batches in flight from DALI and drop them."""
        while self._fed:
            self._fed.popleft()
            try:
                self._pipe.outputs()
            except Exception:  # a failed pipeline is dead: the next one starts clean
                self._discard_pipeline()

    def _fill(self) -> None:
        """Feed batches until :data:`PREFETCH_DEPTH` are in flight."""
        if self._pipe is None:
            self._pipe = self._build(PREFETCH_DEPTH)
            self._started = False
        while len(self._fed) < PREFETCH_DEPTH:
            self._feed_one()
            if self._started:
                self._pipe.schedule_run()
        if not self._started:  # the first schedule_run() runs the queue's whole depth
            self._pipe.schedule_run()
            self._started = True

    def _feed_one(self) -> None:
        epoch, batch = self._cursor
        if batch >= self.num_batches:  # on into the epoch that runs next
            epoch = self._sampler.epoch if epoch == self._running else epoch + 1
            batch = 0
        indices = self._order(epoch)[batch * self._batch_size : (batch + 1) * self._batch_size]
        mix = None if self._draw_mix is None else self._draw_mix(epoch, batch, len(indices))
        self._graph.feed(self._pipe, self._graph.inputs(indices, epoch, batch, mix))
        maps = None if self._label_maps is None else self._label_maps.read_async(indices)
        self._fed.append(_Fed(self._key(epoch, batch), indices, maps, mix))
        self._cursor = (epoch, batch + 1)

    def refeed(self) -> None:
        """Feed the batches in flight again (their mixing was drawn before a change of it,
        such as ``mixup_enabled``): they are taken from DALI, dropped and fed anew."""
        if not self._fed or self._pipe is None:
            return
        self._cursor = self._fed[0].key
        self._drain()
        self._fill()

    def _discard_pipeline(self) -> None:
        self._pipe, self._started = None, False
        self._fed.clear()

    # -- taking -------------------------------------------------------------------------
    def take(self, epoch: Epoch) -> tuple[torch.Tensor, ...]:
        """The next batch of the iterator ``epoch``."""
        if epoch.generation != self._generation:
            raise RuntimeError(
                "this epoch's iterator was left for a later iter(loader): a loader runs one "
                "epoch at a time; iterate the latest iter(loader)"
            )
        fed = self._fed[0]
        if fed.key != self._key(epoch.epoch, epoch.next):
            raise RuntimeError(
                f"the loader fed batch {fed.key} where batch {epoch.next} of epoch "
                f"{epoch.epoch} was due; please report this"
            )
        try:
            outputs = self._pipe.outputs()
        except Exception as e:
            in_flight = [f.indices for f in self._fed]
            self._discard_pipeline()  # DALI cannot go on after a failed batch
            raise self._explain(e, in_flight) from e
        self._fed.popleft()
        self.progress = (epoch.epoch, epoch.next + 1)
        self._fill()  # DALI computes on (into the next epoch) while this batch is assembled
        maps = None if fed.maps is None else fed.maps.result()
        return self._assemble(outputs, fed.indices, maps, self._pipe.exec_dynamic, fed.mix)

    def failed(self, epoch: Epoch) -> bool:
        """Whether the pipeline failed under the iterator ``epoch`` (its epoch is over)."""
        return epoch.generation == self._generation and self._pipe is None

    def _explain(self, error: Exception, in_flight: Sequence[np.ndarray]) -> Exception:
        # DALI's error surfaces at the batch that failed, the first in flight; the others
        # are checked when it names none of its files.
        for candidates in (in_flight[0], np.concatenate(in_flight)):
            explained = explain_decode_failure(self._dataset, candidates.tolist(), str(error))
            if explained is not None:
                return explained
        return error


class Epoch:
    """The iterator of one epoch's batches; what ``iter(loader)`` returns."""

    def __init__(self, epochs: Epochs, generation: int, epoch: int, start: int) -> None:
        self._epochs: Epochs | None = epochs
        self.generation = generation
        #: The epoch this iterator runs.
        self.epoch = epoch
        #: The batch (of the epoch) it yields next.
        self.next = start
        self._total = epochs.num_batches

    def __iter__(self) -> Epoch:
        return self

    def __len__(self) -> int:
        return self._total - self.next

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self._epochs is None or self.next >= self._total:
            self._epochs = None
            raise StopIteration
        try:
            batch = self._epochs.take(self)
        except Exception:
            if self._epochs.failed(self):  # the batches in flight went with the pipeline
                self._epochs = None
            raise
        self.next += 1
        return batch


def _dali_cause(message: str) -> str:
    """The line of a DALI error that says what went wrong (DALI's messages end with
    "Current pipeline object is no longer valid.", which says nothing about it)."""
    text = message.split("encountered:", 1)[-1]
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and "pipeline object is no longer valid" not in line
        and not line.startswith(("Critical error", "C++ context"))
    ]
    return lines[0].rstrip(" :") if lines else message.strip()


def explain_decode_failure(
    dataset: ImageFolderList, candidates: Sequence[int], message: str
) -> ImageDecodeError | None:
    """An error naming the undecodable file among samples ``candidates``, if any.

    The samples of the failed batch are checked (signature bytes, JPEG end marker,
    Pillow); where none fails the check, DALI's "sample #i" names the position.

    Args:
        dataset: the samples.
        candidates: sample indices of the failed batch, in batch order.
        message: DALI's error message.
    """
    cause = _dali_cause(message)
    bad = [(i, r) for i in candidates if (r := check_image_file(dataset.paths[i]))]
    if not bad:
        at = re.search(r"sample #(\d+)", message)
        if at is None or int(at.group(1)) >= len(candidates):
            return None
        bad = [(candidates[int(at.group(1))], "")]
    i, reason = bad[0]
    more = f" and {len(bad) - 1} more in the same batch" if len(bad) > 1 else ""
    detail = f"{reason}; DALI: {cause}" if reason else f"DALI: {cause}"
    return ImageDecodeError(
        f"cannot decode image {dataset.paths[i]} ({detail}){more}. Remove or replace it, or "
        "pass on_bad_image='skip' to check every file at construction and leave out the "
        "ones that fail"
    )
