"""Host -> device copies come from pinned memory (loader/_transfer.py).

The CUDA branch runs here with the "meta" device and a recording ``pin_memory`` (this
machine may have no GPU): what reaches ``Tensor.to`` for another device must be the
pinned tensor, copied with ``non_blocking=True``; on CPU nothing is copied at all.
tests/test_loader.py's GPU test checks the effect on CUDA: no wait for queued work.
"""

from __future__ import annotations

import numpy as np
import torch

from dali_relabel.loader._transfer import to_device


def test_copies_to_another_device_come_from_pinned_memory(monkeypatch):
    pinned, copies = [], []
    to = torch.Tensor.to

    def pin_memory(self):
        out = self.clone()
        pinned.append(out)
        return out

    def recording_to(self, *args, **kwargs):
        copies.append((self, kwargs.get("non_blocking", False)))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: any(self is p for p in pinned))
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    meta = torch.device("meta")
    out = to_device(np.arange(6, dtype=np.int64).reshape(2, 3), meta)
    assert out.device == meta and out.shape == (2, 3) and out.dtype == torch.int64
    assert len(pinned) == 1 and copies == [(pinned[0], True)]
    again = to_device(pinned[0], meta)  # already pinned: not pinned twice
    assert again.device == meta and len(pinned) == 1 and copies[-1] == (pinned[0], True)


def test_cpu_batches_are_not_copied():
    array = np.arange(4.0)
    out = to_device(array, torch.device("cpu"))
    assert out.data_ptr() == torch.from_numpy(array).data_ptr()
