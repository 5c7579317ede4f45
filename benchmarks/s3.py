"""S3 benchmark: a store on an S3-compatible server against the same store on disk.

Runs moto's S3 server on loopback (in this process, the ``[dev]`` extra), so the figures
are those of a slow Python server with no network between: they bound the client's
overhead (requests per shard, decoding) rather than predict AWS's throughput. Measured
in one run, for a store of ``--samples`` maps (k=5, 15x15, float16/int16, 1,024 per
shard):

  upload        publish(): every object PUT, then the group's zarr.json (complete) last
  open          LabelMapStore.open (documents, one LIST of the shards) and its keys
  load          LabelMapStore.load(), the whole table, S3 and local alternately
  requests      GETs per map shard while loading (1 means whole shards per request)
  fingerprint   one LIST of (key, size, ETag) and the metadata documents

Usage: python benchmarks/s3.py [--samples 32768] [--reps 5] [--out runs/bench/s3.json]
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, machine

from dali_relabel import LabelMapStore
from dali_relabel.store import LabelMapWriter, publish

IMAGENET_TRAIN = 1_281_167


class _Requests(logging.Handler):
    """Counts the requests moto's server logs, by method."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if '"' in text:
            self.counts[text.split('"')[1].split(" ")[0]] += 1


def _write(path: Path, n: int) -> LabelMapStore:
    rng = np.random.default_rng(0)
    writer = LabelMapWriter.create(
        path, [f"n{i % 1000:08d}/{i:08d}" for i in range(n)], num_classes=1000, k=5, grid=(15, 15)
    )
    for start, stop in writer.missing_blocks():
        smooth = rng.normal(0, 2, (stop - start, 5, 1, 1)) + rng.normal(0, 0.1, (1, 5, 15, 15))
        classes = rng.integers(0, 1000, (stop - start, 5, 1, 1)) + np.zeros((1, 5, 15, 15), int)
        writer.write_block(start, smooth.astype(np.float32), classes)
    return writer.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32768)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    requests = _Requests()
    log = logging.getLogger("werkzeug")
    log.setLevel(logging.INFO)
    log.addHandler(requests)
    log.propagate = False
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    url = "s3://bench/maps.zarr"
    with tempfile.TemporaryDirectory() as tmp:
        local = _write(Path(tmp) / "maps.zarr", args.samples)
        size = sum(p.stat().st_size for p in Path(local.path).rglob("*") if p.is_file())

        requests.counts.clear()
        start = time.perf_counter()
        publish(local.path, url, progress=False)
        upload_s = time.perf_counter() - start
        upload_requests = dict(requests.counts)

        start = time.perf_counter()
        remote = LabelMapStore.open(url)
        open_s = time.perf_counter() - start
        start = time.perf_counter()
        keys_equal = remote.keys == local.keys
        keys_s = time.perf_counter() - start

        shards = 2 * -(-args.samples // remote.shard_size)
        times: dict[str, list[float]] = {"s3": [], "local": []}
        gets: list[int] = []
        equal = True
        for rep in range(args.reps):
            for name in ("s3", "local") if rep % 2 == 0 else ("local", "s3"):
                store = LabelMapStore.open(url if name == "s3" else local.path)
                requests.counts.clear()
                start = time.perf_counter()
                store.load(progress=False)
                times[name].append(time.perf_counter() - start)
                if name == "s3":
                    gets.append(requests.counts["GET"])
                    reference = LabelMapStore.open(local.path).load(progress=False)
                    equal &= all(
                        np.array_equal(a, b)
                        for a, b in zip(store.tables(), reference.tables(), strict=True)
                    )
        requests.counts.clear()
        start = time.perf_counter()
        remote.fingerprint()
        fingerprint_s = time.perf_counter() - start
        fingerprint_requests = dict(requests.counts)
    server.stop()

    def rate(seconds: list[float]) -> dict[str, float]:
        med = statistics.median(seconds)
        return {
            "median_s": round(med, 3),
            "min_s": round(min(seconds), 3),
            "max_s": round(max(seconds), 3),
            "samples_per_s": round(args.samples / med),
        }

    s3, disk = rate(times["s3"]), rate(times["local"])
    emit(
        {
            "benchmark": "s3",
            "machine": machine(),
            "server": "moto (ThreadedMotoServer) on loopback, in this process",
            "samples": args.samples,
            "store_bytes": size,
            "objects_uploaded": upload_requests.get("PUT", 0),
            "upload_s": round(upload_s, 3),
            "open_s": round(open_s, 4),
            "keys_s": round(keys_s, 4),
            "keys_equal": keys_equal,
            "load": {
                "s3": s3,
                "local": disk,
                "s3_over_local_time": round(s3["median_s"] / disk["median_s"], 2),
            },
            "load_gets": statistics.median(gets),
            "map_shards": shards,
            "gets_per_shard": round(statistics.median(gets) / shards, 3),
            "tables_equal": equal,
            "fingerprint_s": round(fingerprint_s, 4),
            "fingerprint_requests": fingerprint_requests,
            "imagenet_load_s_at_this_rate": round(IMAGENET_TRAIN / s3["samples_per_s"], 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
