"""Host -> device copies that never wait for the device: one pinned buffer per batch.

``tensor.to("cuda", non_blocking=True)`` from *pageable* host memory synchronizes with the
stream before it copies: the loader would wait for the trainer's queued GPU work on every
batch (seen on the lent H200: ``next(loader)`` waited out a second of queued kernels).
From pinned memory the copy is queued and returns at once.

A batch's host data (sample indices, crop boxes, mirror flags, gathered label maps or
their table rows) is packed into one pinned buffer and copied in one transfer, then
viewed on the device. One buffer per batch, from torch's caching host allocator: it hands
out pinned blocks without a new page-locked allocation once it holds as many as are in
flight (a new one can wait for the device, as CUDA allocations of page-locked memory may),
and does not reuse a block before the copy queued from it is done (it records the copy:
the copy's source must be the tensor it allocated, not a view made through numpy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["pack", "to_device", "unpack"]

# each array starts at a multiple of this in the buffer, so every dtype's view is aligned
_ALIGN = 64
#: (byte offset, dtype, shape) of each array in a packed buffer.
Layout = list[tuple[int, torch.dtype, tuple[int, ...]]]


def to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """``arrays`` as tensors on ``device``: on the CPU the arrays themselves (no copy), on
    another device one non-blocking copy of one pinned buffer holding them all.

    Args:
        arrays: host arrays (any dtypes and shapes).
        device: the target device.
    """
    if device.type == "cpu":
        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    buffer, layout = pack(arrays, pin=True)
    return unpack(buffer.to(device, non_blocking=True), layout)


def pack(arrays: Sequence[np.ndarray], *, pin: bool) -> tuple[torch.Tensor, Layout]:
    """``arrays`` in one uint8 host tensor (pinned with ``pin``), and where each lies."""
    layout: Layout = []
    offset = 0
    for array in arrays:
        dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        layout.append((offset, dtype, tuple(array.shape)))
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    buffer = torch.empty(max(offset, 1), dtype=torch.uint8, pin_memory=pin)
    view = buffer.numpy()
    for array, (start, _, _) in zip(arrays, layout, strict=True):
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        view[start : start + flat.size] = flat
    return buffer, layout


def unpack(buffer: torch.Tensor, layout: Layout) -> list[torch.Tensor]:
    """The arrays of :func:`pack` as views of ``buffer`` (on whatever device it is)."""
    out = []
    for start, dtype, shape in layout:
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        out.append(buffer[start : start + nbytes].view(dtype).view(shape))
    return out
