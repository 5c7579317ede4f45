"""Throughput benchmark; the implementation is `dali_relabel.bench` (also `dali-relabel bench`).

Usage: python benchmarks/throughput.py [--images-per-class 100] [--batch-size 64]
                                       [--out-dir runs/bench] [--device cpu|cuda] [--paths ...]
"""

import sys

from dali_relabel.bench import main

if __name__ == "__main__":
    sys.exit(main())
