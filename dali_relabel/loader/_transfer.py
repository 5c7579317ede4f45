"""Host -> device copies that never wait for the device.

``tensor.to("cuda", non_blocking=True)`` from *pageable* host memory synchronizes with the
stream before it copies: the loader would wait for the trainer's queued GPU work on every
batch (measured on an H200: ``next(loader)`` waited out a second of queued kernels). From
pinned memory the copy is queued and returns at once. torch's caching host allocator
(``pin_memory()``, ``torch.empty(..., pin_memory=True)``) hands out pinned blocks cheaply
after warm-up, and does not reuse a block before the copies queued from it are done.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["pinned_empty", "to_device"]


def to_device(array: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``; on CUDA copied from pinned memory without waiting.

    Args:
        array: host data (a numpy array or a CPU tensor), or a tensor already on ``device``.
        device: the target device.
    """
    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    if tensor.device == device or device.type == "cpu":
        return tensor.to(device)
    if tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def pinned_empty(shape: tuple[int, ...], dtype: np.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialized host tensor to fill (through ``.numpy()``) and copy to ``device``:
    pinned when ``device`` is a CUDA device, which saves the copy into pinned memory.

    Pass this tensor itself to :func:`to_device`, not a ``torch.from_numpy`` view of it:
    the caching allocator keeps a block from reuse until its queued copies are done only
    when the copy's source is its own tensor.
    """
    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return torch.empty(shape, dtype=torch_dtype, pin_memory=device.type == "cuda")
