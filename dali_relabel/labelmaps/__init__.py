"""Everything that makes or checks a label-map store.

- :func:`generate_label_maps`: label maps from pretrained classifiers made fully
  convolutional (:func:`load_teacher`, :func:`dense_teacher`, :class:`DenseTeacher`),
  one teacher or an ensemble;
- :func:`ensemble_label_maps`: several stores averaged per cell (:func:`densify`,
  :func:`resample`);
- :func:`convert`: the official ReLabel release (``.pt`` files) into a store;
- :func:`verify_keys`: a store's keys against an image folder;
- :func:`label_map_report`: how sharp a store's targets are and how often they agree
  with the folder labels (:class:`LabelMapReport`).

Names load on first use, so that the command line and a loader-only job do not import
the teachers (torch models, the EfficientNet packages of the ``[tools]`` extra).
docs/GENERATE.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "DECODERS",
    "DEFAULT_SAMPLES",
    "DEFAULT_TEACHER",
    "LAYOUTS",
    "DenseTeacher",
    "KeyReport",
    "LabelMapReport",
    "convert",
    "decode_image",
    "dense_teacher",
    "densify",
    "ensemble_label_maps",
    "file_sha256",
    "find_label_map_files",
    "generate_label_maps",
    "label_map_report",
    "load_label_map_file",
    "load_teacher",
    "resample",
    "resize_square",
    "verify_keys",
]

# public name -> private module that defines it
_LAZY = {
    "DECODERS": "_decode",
    "decode_image": "_decode",
    "resize_square": "_decode",
    "DEFAULT_TEACHER": "_zoo",
    "DenseTeacher": "_teachers",
    "dense_teacher": "_teachers",
    "file_sha256": "_teachers",
    "load_teacher": "_teachers",
    "generate_label_maps": "_generate",
    "densify": "_ensemble",
    "ensemble_label_maps": "_ensemble",
    "resample": "_ensemble",
    "LAYOUTS": "_convert",
    "convert": "_convert",
    "find_label_map_files": "_convert",
    "load_label_map_file": "_convert",
    "KeyReport": "_verify",
    "verify_keys": "_verify",
    "DEFAULT_SAMPLES": "_report",
    "LabelMapReport": "_report",
    "label_map_report": "_report",
}

if TYPE_CHECKING:
    from dali_relabel.labelmaps._convert import (
        LAYOUTS,
        convert,
        find_label_map_files,
        load_label_map_file,
    )
    from dali_relabel.labelmaps._decode import DECODERS, decode_image, resize_square
    from dali_relabel.labelmaps._ensemble import densify, ensemble_label_maps, resample
    from dali_relabel.labelmaps._generate import generate_label_maps
    from dali_relabel.labelmaps._report import (
        DEFAULT_SAMPLES,
        LabelMapReport,
        label_map_report,
    )
    from dali_relabel.labelmaps._teachers import (
        DenseTeacher,
        dense_teacher,
        file_sha256,
        load_teacher,
    )
    from dali_relabel.labelmaps._verify import KeyReport, verify_keys
    from dali_relabel.labelmaps._zoo import DEFAULT_TEACHER


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dali_relabel.labelmaps' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dali_relabel.labelmaps.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
