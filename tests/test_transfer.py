"""Host -> device copies: one pinned buffer per batch (loader/_transfer.py).

The CUDA branch runs here with the "meta" device and a recording ``torch.empty`` (this
machine may have no GPU): what reaches ``Tensor.to`` for another device must be one
buffer allocated pinned, copied with ``non_blocking=True``; on the CPU nothing is copied.
The packing itself is checked on the CPU, byte for byte. tests/test_loader.py's GPU test
checks the effect on CUDA: no wait for queued work.
"""

from __future__ import annotations

import numpy as np
import torch

from dali_relabel.loader import _transfer
from dali_relabel.loader._transfer import pack, to_device, unpack


def _arrays():
    rng = np.random.default_rng(0)
    return [
        np.arange(7, dtype=np.int64),  # sample indices
        rng.random((7, 4)).astype(np.float32),  # boxes
        rng.random(7) < 0.5,  # mirror flags
        rng.random((7, 5, 3, 3)).astype(np.float16),  # scores
        rng.integers(-1000, 1000, (7, 5, 3, 3)).astype(np.int16),  # classes
        np.empty((0, 4), dtype=np.float64),
    ]


def test_pack_and_unpack_give_back_every_array():
    arrays = _arrays()
    buffer, layout = pack(arrays, pin=False)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    for original, unpacked in zip(arrays, unpack(buffer, layout), strict=True):
        assert unpacked.shape == original.shape
        assert unpacked.dtype == torch.from_numpy(original).dtype
        np.testing.assert_array_equal(unpacked.numpy(), original)
        if original.size:  # aligned views of the one buffer
            assert unpacked.data_ptr() % 8 == 0
            assert 0 <= unpacked.data_ptr() - buffer.data_ptr() < buffer.numel()


def test_a_batch_goes_to_another_device_in_one_copy_from_pinned_memory(monkeypatch):
    pinned, copies = [], []
    empty, to = torch.empty, torch.Tensor.to

    def recording_empty(*args, pin_memory=False, **kwargs):
        out = empty(*args, **kwargs)
        if pin_memory:
            pinned.append(out)
        return out

    def recording_to(self, *args, **kwargs):
        copies.append((self, kwargs.get("non_blocking", False)))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(_transfer.torch, "empty", recording_empty)
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    meta = torch.device("meta")
    arrays = _arrays()
    out = to_device(arrays, meta)
    monkeypatch.undo()
    assert len(pinned) == 1 and copies == [(pinned[0], True)]
    for original, moved in zip(arrays, out, strict=True):
        assert moved.device == meta and moved.shape == original.shape
        assert moved.dtype == torch.from_numpy(original).dtype


def test_cpu_batches_are_not_copied():
    arrays = _arrays()
    out = to_device(arrays, torch.device("cpu"))
    assert [t.data_ptr() for t in out[:5]] == [a.ctypes.data for a in arrays[:5]]
