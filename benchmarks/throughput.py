"""Throughput benchmark: `dali-relabel bench` (dali_relabel.tools.benchmark_throughput).

Usage: python benchmarks/throughput.py [--images-per-class 100] [--batch-size 64]
                                       [--out-dir runs/bench] [--device cpu|cuda] [--paths ...]
"""

import sys

from dali_relabel.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
