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
file, the error names it (:func:`~._images.explain_decode_failure`). A batch whose header
check (:class:`~._images.HeaderCheck`) refuses a file is never fed: it is an error when it
is due, and nothing is fed after it. docs/LOADER.md ("Epochs").
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dali_relabel.imagefolder import ImageFolderList
from dali_relabel.loader._graph import LoaderGraph
from dali_relabel.loader._images import HeaderCheck, explain_decode_failure
from dali_relabel.loader._label_maps import LabelMaps
from dali_relabel.loader._sampler import ShardSampler

__all__ = ["PREFETCH_DEPTH", "Epoch", "Epochs"]

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
    """A batch handed to DALI and not yet taken, or refused before it."""

    key: tuple[int, int]  # (epoch, or 0 where the epoch changes nothing; batch)
    indices: np.ndarray
    maps: cf.Future | None
    mix: Any = None  # the batch's mixing (MixParams), drawn when it was fed
    refused: Exception | None = None  # why the batch was not fed (its header check)

    @property
    def in_dali(self) -> bool:
        return self.refused is None


# The key of a batch fed only to start the pipeline (see Epochs._fill): never taken.
_STAND_IN = (-1, -1)


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
            CutMix boxes unless the loader colours images, the assembler blends, and
            pastes where the graph does not, and mixes targets); None without mixing.
        headers: checks the files of each batch before it is fed (the pixel limit);
            None for no check.
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
        headers: HeaderCheck | None = None,
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
        self._headers = headers
        self._checking: tuple[tuple[int, int], Any] | None = None  # the next batch's check
        samples = len(sampler)
        #: Batches per epoch (the same every epoch).
        self.num_batches = samples // batch_size if drop_last else -(-samples // batch_size)
        #: The pipeline's batch size: no larger than the shard, nothing decoded as padding.
        self.pipeline_batch_size = max(1, min(batch_size, samples))
        self._pipe: Any = None
        self._started = False  # the pipeline's first schedule_run() fills its whole queue
        self._fed: collections.deque[_Fed] = collections.deque()
        self._last_inputs: dict[str, Any] | None = None  # of the latest batch fed to DALI
        self._blocked = False  # a batch was refused: nothing is fed after it
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
        self._blocked = False
        while self._fed:
            if not self._fed.popleft().in_dali:
                continue
            try:
                self._pipe.outputs()
            except Exception:  # a failed pipeline is dead: the next one starts clean
                self._discard_pipeline()

    def _in_dali(self) -> int:
        return sum(fed.in_dali for fed in self._fed)

    def _fill(self) -> None:
        """Feed batches until :data:`PREFETCH_DEPTH` are in flight."""
        if self._pipe is None:
            self._pipe = self._build(PREFETCH_DEPTH)
            self._started, self._last_inputs = False, None
        while self._in_dali() < PREFETCH_DEPTH and not self._blocked:
            if self._feed_one() and self._started:
                self._pipe.schedule_run()
        if not self._started and self._in_dali():
            # The first schedule_run() runs the queue's whole depth: where a refused batch
            # stopped the feed short of it, the batch fed last is fed again, then dropped.
            while self._in_dali() < PREFETCH_DEPTH:
                self._graph.feed(self._pipe, self._last_inputs)
                self._fed.append(_Fed(_STAND_IN, np.empty(0, np.int64), None))
            self._pipe.schedule_run()
            self._started = True

    def _upcoming(self) -> tuple[int, int, np.ndarray]:
        """(epoch, batch, sample indices) of the batch fed next."""
        epoch, batch = self._cursor
        if batch >= self.num_batches:  # on into the epoch that runs next
            epoch = self._sampler.epoch if epoch == self._running else epoch + 1
            batch = 0
        size = self._batch_size
        return epoch, batch, self._order(epoch)[batch * size : (batch + 1) * size]

    def _feed_one(self) -> bool:
        """Feed the next batch, unless its header check refuses it; whether it was fed."""
        epoch, batch, indices = self._upcoming()
        key = self._key(epoch, batch)
        self._cursor = (epoch, batch + 1)
        refused = self._check_headers((epoch, batch), indices)
        if refused is not None:
            self._fed.append(_Fed(key, indices, None, refused=refused))
            self._blocked = True
            return False
        mix = None if self._draw_mix is None else self._draw_mix(epoch, batch, len(indices))
        self._last_inputs = self._graph.inputs(indices, epoch, batch, mix)
        self._graph.feed(self._pipe, self._last_inputs)
        maps = None if self._label_maps is None else self._label_maps.read_async(indices)
        self._fed.append(_Fed(key, indices, maps, mix))
        return True

    def _check_headers(self, at: tuple[int, int], indices: np.ndarray) -> Exception | None:
        """The header check of the batch ``at`` = (epoch, batch), started when the batch
        before it was fed; the next batch's is started now, to run while DALI works."""
        if self._headers is None:
            return None
        pending = self._checking[1] if self._checking and self._checking[0] == at else None
        refused = (pending or self._headers.submit(indices)).result()
        following = self._upcoming()
        self._checking = (following[:2], self._headers.submit(following[2]))
        return refused

    def refeed(self) -> None:
        """Feed the batches in flight again (their mixing was drawn before a change of it,
        such as ``mixup_enabled``): they are taken from DALI, dropped and fed anew."""
        if not self._fed or self._pipe is None or self._fed[0].key == _STAND_IN:
            return
        self._cursor = self._fed[0].key
        self._drain()
        self._fill()

    def _discard_pipeline(self) -> None:
        self._pipe, self._started, self._blocked = None, False, False
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
        if fed.refused is not None:  # never fed: the batches before it were taken
            self._fed.popleft()
            raise fed.refused
        try:
            outputs = self._pipe.outputs()
        except Exception as e:
            in_flight = [f.indices.tolist() for f in self._fed]
            self._discard_pipeline()  # DALI cannot go on after a failed batch
            raise explain_decode_failure(self._dataset, in_flight, str(e)) from e
        self._fed.popleft()
        self.progress = (epoch.epoch, epoch.next + 1)
        self._fill()  # DALI computes on (into the next epoch) while this batch is assembled
        maps = None if fed.maps is None else fed.maps.result()
        batch = self._assemble(outputs, fed.indices, maps, self._pipe.exec_dynamic, fed.mix)
        if self._label_maps is not None:  # a table read in the background starts now
            self._label_maps.begin_loading()
        return batch

    def failed(self, epoch: Epoch) -> bool:
        """Whether the pipeline failed, or a batch was refused, under the iterator
        ``epoch`` (its epoch is over)."""
        return epoch.generation == self._generation and (self._pipe is None or self._blocked)


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
