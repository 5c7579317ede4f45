"""The error hierarchy: one base, each class also the builtin a caller would catch."""

from __future__ import annotations

import pytest
import torch

from dali_relabel import errors, label_pooling
from dali_relabel.errors import ArgumentError, DaliRelabelError, KeyNotFoundError
from dali_relabel.store import LabelMapWriter

BUILTINS = (ValueError, TypeError, KeyError, IndexError, ImportError, OSError, RuntimeError)


@pytest.mark.parametrize(
    "name", sorted(set(errors.__all__) - {"DaliRelabelError", "DaliRelabelWarning"})
)
def test_every_error_is_the_library_base_and_a_builtin(name):
    cls = getattr(errors, name)
    assert issubclass(cls, DaliRelabelError)
    assert any(issubclass(cls, builtin) for builtin in BUILTINS), name


def test_the_warning_is_a_user_warning_not_an_error():
    assert issubclass(errors.DaliRelabelWarning, UserWarning)
    assert not issubclass(errors.DaliRelabelWarning, DaliRelabelError)


def test_argument_errors_are_caught_either_way(tmp_path):
    scores, classes = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.int64)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    for call in (
        lambda: label_pooling(scores, classes, boxes, num_classes=0),
        lambda: LabelMapWriter.create(tmp_path / "s", ["a"], num_classes=3, k=4, grid=(2, 2)),
    ):
        with pytest.raises(ArgumentError) as caught:
            call()
        assert isinstance(caught.value, ValueError) and isinstance(caught.value, DaliRelabelError)


def test_a_missing_key_reads_as_a_sentence():
    error = KeyNotFoundError("label map store 'x' has no key 'a/b'")
    assert str(error) == "label map store 'x' has no key 'a/b'"  # KeyError would quote it
    assert isinstance(error, KeyError)
