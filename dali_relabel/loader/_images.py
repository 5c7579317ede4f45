"""The loader's checks of image files: what DALI should not decode, and what it failed on.

- ``on_bad_image="skip"``: every file is checked at construction
  (:func:`~dali_relabel.imagefolder.find_bad_images`: signature bytes, the size its
  header declares, JPEG end marker, Pillow) and those that fail are left out
  (:func:`skip_bad_images`).
- ``on_bad_image="raise"``: the size each image's header declares is read before its
  batch is fed to DALI (:class:`HeaderCheck`), so that DALI never decodes a
  decompression bomb (a 1.5 kB JPEG that declares 20,000 x 20,000 pixels decodes into
  1.2 GB of grey): the batch that holds one is an error naming the file.
- A batch that DALI fails on is an error naming the file and DALI's own cause
  (:func:`explain_decode_failure`), not "Current pipeline object is no longer valid".
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import warnings
from collections.abc import Sequence

import numpy as np

from dali_relabel.errors import ImageDecodeError
from dali_relabel.imagefolder import (
    ImageFolderList,
    check_image_file,
    check_image_header,
    find_bad_images,
)

__all__ = ["HeaderCheck", "dali_cause", "explain_decode_failure", "skip_bad_images"]

_FIX = (
    "Remove or replace it, or pass on_bad_image='skip' to check every file at "
    "construction and leave out the ones that fail"
)


def skip_bad_images(
    dataset: ImageFolderList, max_pixels: int | None
) -> tuple[ImageFolderList, list[tuple[str, str]]]:
    """``dataset`` without the files :func:`find_bad_images` rejects, and (path, reason)
    of each of those, with a warning; an error when none is left.

    Args:
        dataset: the samples.
        max_pixels: the most pixels an image's header may declare, or None.
    """
    bad = find_bad_images(dataset.paths, max_pixels=max_pixels)
    if not bad:
        return dataset, []
    skipped = [(str(dataset.paths[i]), reason) for i, reason in bad]
    drop = {i for i, _ in bad}
    total = len(dataset)
    kept = dataset.subset(i for i in range(total) if i not in drop)
    first, reason = skipped[0]
    warnings.warn(
        f"on_bad_image='skip': left out {len(bad):,} of {total:,} images that cannot be "
        f"decoded (first: {first} {reason}); the list is in loader.skipped_images",
        stacklevel=3,
    )
    if not len(kept):
        raise ImageDecodeError(
            f"none of the {total:,} images under {str(dataset.root)!r} can be decoded "
            f"(first: {first} {reason}); root must hold images that DALI can decode"
        )
    return kept, skipped


class HeaderCheck:
    """The size each image's header declares, held to a pixel limit before its batch is
    fed to DALI.

    :meth:`submit` reads the headers of a batch's files on threads (the loader submits
    the batch it feeds next while DALI computes, so the check is off the trainer's
    path); a file passes once per loader (a later epoch does not read it again).

    Args:
        paths: every sample's image file; position = sample index.
        limit: the most pixels (width x height) a header may declare.
        threads: threads reading headers (I/O bound: files on a network file system).
    """

    def __init__(self, paths: Sequence[str], limit: int, threads: int) -> None:
        self._paths = paths
        self.limit = limit
        self._threads = max(1, threads)
        self._passed = np.zeros(len(paths), dtype=bool)
        self._pool: cf.ThreadPoolExecutor | None = None

    def submit(self, indices: np.ndarray) -> _Pending:
        """Start checking the files of samples ``indices``; ``.result()`` is None or the
        :class:`ImageDecodeError` naming the first file over the limit."""
        todo = indices[~self._passed[indices]]
        if not len(todo):
            return _Pending([])
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self._threads, thread_name_prefix="dali_relabel_hdr")
        chunks = np.array_split(todo, min(self._threads, len(todo)))
        return _Pending([self._pool.submit(self._check, chunk) for chunk in chunks])

    def _check(self, indices: np.ndarray) -> ImageDecodeError | None:
        for i in indices.tolist():
            reason = check_image_header(self._paths[i], self.limit)
            if reason is not None:
                return ImageDecodeError(
                    f"image {self._paths[i]} {reason}. {_FIX}, or raise max_image_pixels"
                )
            self._passed[i] = True
        return None

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


class _Pending:
    """The header checks of one batch in progress."""

    def __init__(self, futures: list[cf.Future]) -> None:
        self._futures = futures

    def result(self) -> ImageDecodeError | None:
        errors = [e for e in (f.result() for f in self._futures) if e is not None]
        return errors[0] if errors else None


# Lines of DALI's error messages that say where, not what.
_BOILERPLATE = (
    "Critical error",
    "Error in ",
    "which was used in the pipeline",
    "File ",
    "C++ context",
    "Current pipeline object is no longer valid",
)


def dali_cause(message: str) -> str:
    """What failed, from a DALI error message: the lines after "encountered:", without
    the boilerplate around them ("Current pipeline object is no longer valid.")."""
    text = message.split("encountered:", 1)[-1]
    lines = [line.strip().rstrip(" :") for line in text.splitlines()]
    useful = [line for line in lines if line and not line.startswith(_BOILERPLATE)]
    return "; ".join(dict.fromkeys(useful)) or "DALI gave no detail"


def explain_decode_failure(
    dataset: ImageFolderList, in_flight: Sequence[Sequence[int]], message: str
) -> ImageDecodeError:
    """An error naming the undecodable file among the batches in flight, and DALI's cause.

    DALI's error surfaces at the batch that failed, the first in flight. Its files are
    checked cheaply first (signature bytes, JPEG end marker, Pillow), then those of the
    other batches; where none fails, DALI's "sample #i" names a position in the failed
    batch; where it does not, the files are decoded with Pillow one by one until one
    fails. Only where none does is the error about the batches rather than a file.

    Args:
        dataset: the samples.
        in_flight: sample indices of each batch in flight, the failed one first.
        message: DALI's error message.
    """
    cause = dali_cause(message)
    failed = list(in_flight[0]) if len(in_flight) else []
    every = [i for batch in in_flight for i in batch]
    bad = [(i, r) for i in failed if (r := check_image_file(dataset.paths[i]))]
    if not bad:
        bad = [(i, r) for i in every if (r := check_image_file(dataset.paths[i]))]
    if not bad and (at := re.search(r"sample #(\d+)", message)) and int(at[1]) < len(failed):
        bad = [(failed[int(at[1])], "")]
    if not bad:  # files that pass the cheap checks: decode them, stop at the first failure
        decoded = ((i, check_image_file(dataset.paths[i], full=True)) for i in every)
        found = next(((i, r) for i, r in decoded if r), None)
        bad = [] if found is None else [found]
    if not bad:
        return ImageDecodeError(
            f"DALI failed on a batch of {len(failed)} samples (first: "
            f"{dataset.paths[failed[0]] if failed else None}): {cause}; none of the "
            f"{len(every)} files in flight fails Pillow's checks. {_FIX}"
        )
    i, reason = bad[0]
    more = f" and {len(bad) - 1} more in the batches in flight" if len(bad) > 1 else ""
    detail = f"{reason}; DALI: {cause}" if reason else f"DALI: {cause}"
    return ImageDecodeError(f"cannot decode image {dataset.paths[i]} ({detail}){more}. {_FIX}")
