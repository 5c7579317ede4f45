"""Startup and memory at ImageNet scale, per ``label_map_memory`` mode (issue 10).

Builds, once per size and cached in ``--cache``:
  tree   1,000 ImageNet class folders of hard links to a few real photos (scikit-image),
         ``--samples`` files in all (ImageNet's names: ``<wnid>/<wnid>_<n>.JPEG``), so
         that 1.28 M images take a few MB of disk;
  store  their label maps (k=5, 15x15, float16, synthetic logits shaped like the
         release's: a blob of the label, sorted top-k per cell) written through
         ``LabelMapWriter`` in the tree's sample order.

Then measures ``ReLabelLoader(tree, store, batch_size=256, device="cpu",
label_map_memory=MODE)`` for each mode, each in a fresh process: construction time (and
its parts: listing the folder, joining keys to store rows, placing the maps), time to
the first batch of ``iter(loader)``, resident memory after construction and after the
first batch (RSS, and PSS with its anonymous / file / shmem parts, from
/proc/<pid>/smaps_rollup, read by this process) and the peaks (RSS: the kernel's
VmHWM; PSS: sampled every 0.2 s), and the peak while the maps were placed over the RSS
before, in tables. A node's memory counts PSS without /dev/shm pages plus the /dev/shm
table once (it is RAM whether or not a page was touched). Modes:
  host          the table in this process's memory (``auto`` with one local rank)
  stream        maps read from the store per batch
  shared_cold   the node's table decoded by this process into a file (the loader's
                default folder, /dev/shm when it has room, or --table-cache; emptied)
  shared_warm   the same file mapped by a later process (what every rank after the
                first, and every later run, does)
  shared_xN     ``--node-ranks`` N processes started at once with LOCAL_WORLD_SIZE=N
                and ``auto`` (one decodes, the others wait and map): the node's total
                PSS against N private tables
``--baseline-src DIR`` adds the same measurements of another checkout of dali_relabel
(e.g. ``git worktree add /tmp/base main``) for its ``auto`` and ``stream``, with the
ratios candidate / baseline. Without it the modes are compared to ``host``.

Usage: python benchmarks/scale.py --cache /data/scale [--samples 320000]
       [--modes host stream shared_cold shared_warm] [--node-ranks 4]
       [--baseline-src /tmp/base] [--out runs/bench/scale.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

K, GRID, CLASSES, BATCH = 5, (15, 15), 1000, 256
MODES = ("host", "stream", "shared_cold", "shared_warm")


# -- building the data ---------------------------------------------------------------------------
def build_tree(cache: Path, samples: int) -> Path:
    """``cache/tree_<samples>/train``: 1,000 class folders of hard links to 5 photos."""
    from PIL import Image
    from tqdm import tqdm

    from dali_relabel.imagenet import imagenet_wnids
    from dali_relabel.tools import PHOTOS, load_photo

    top = cache / f"tree_{samples}"
    root = top / "train"
    if (top / "complete").exists():
        return root
    if top.exists():
        shutil.rmtree(top)
    # A file takes at most 65,000 links on ext4: one source file per 50,000 images, the
    # five photos at several JPEG qualities, kept in the tree's own folder.
    (top / "photos").mkdir(parents=True)
    images = {name: Image.fromarray(load_photo(name)) for name in sorted(PHOTOS)}
    for img in images.values():
        img.thumbnail((500, 500))  # ImageNet-like sizes: about 500 x 375
    photos = []
    for i in range(max(len(images), -(-samples // 50_000))):
        name = sorted(images)[i % len(images)]
        path = top / "photos" / f"{name}_{i}.JPEG"
        images[name].save(path, quality=90 - i // len(images))
        photos.append(path)
    wnids = imagenet_wnids()
    per, extra = divmod(samples, CLASSES)
    n = 0
    for c, wnid in enumerate(tqdm(wnids, desc="tree", unit="folders")):
        folder = root / wnid
        folder.mkdir(parents=True)
        for j in range(per + (c < extra)):
            os.link(photos[n % len(photos)], folder / f"{wnid}_{j + 1}.JPEG")
            n += 1
    (top / "complete").write_text(f"{n}\n")
    return root


def _block_maps(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic maps of a block, the release's shape: the label's blob and k-1 others,
    sorted by score per cell (``tools.synthetic_label_map``, vectorised)."""
    n = len(labels)
    gh, gw = GRID
    yy, xx = np.mgrid[0:gh, 0:gw]
    cy, cx = rng.uniform(0, gh, (n, 1, 1)), rng.uniform(0, gw, (n, 1, 1))
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.3 * max(gh, gw)) ** 2))
    logits = np.empty((n, K, gh, gw))
    logits[:, 0] = 2.0 + 8.0 * blob + rng.normal(0, 0.3, (n, gh, gw))
    logits[:, 1:] = rng.normal(3.0, 1.0, (n, K - 1, 1, 1)) + rng.normal(0, 0.5, (n, K - 1, gh, gw))
    classes = np.empty((n, K, gh, gw), np.int64)
    classes[:, 0] = labels[:, None, None]
    others = (labels[:, None] + rng.integers(1, CLASSES, (n, K - 1))) % CLASSES
    classes[:, 1:] = others[:, :, None, None]
    order = np.argsort(-logits, axis=1, kind="stable")
    return np.take_along_axis(logits, order, 1), np.take_along_axis(classes, order, 1)


def build_store(cache: Path, root: Path, samples: int) -> Path:
    """``cache/store_<samples>.zarr`` through LabelMapWriter, in the tree's sample order."""
    from tqdm import tqdm

    from dali_relabel.imagefolder import ImageFolderList
    from dali_relabel.imagenet import imagenet_wnids
    from dali_relabel.store import LabelMapStore, LabelMapWriter

    path = cache / f"store_{samples}.zarr"
    if path.exists():
        try:
            if LabelMapStore.open(path).complete:
                return path
        except Exception:  # a store of an older format, or half written: write anew
            pass
        shutil.rmtree(path)
    listing = ImageFolderList.scan(root, class_names=imagenet_wnids())
    writer = LabelMapWriter.create(
        path,
        listing.keys,
        num_classes=CLASSES,
        k=K,
        grid=GRID,
        class_names=imagenet_wnids(),
        provenance={"source": "benchmarks/scale.py, synthetic"},
    )
    labels = np.asarray(listing.targets)
    rng = np.random.default_rng(0)
    for start, stop in tqdm(writer.missing_blocks(), desc="store", unit="shards"):
        scores, classes = _block_maps(labels[start:stop], rng)
        writer.write_block(start, scores, classes)
    writer.finalize()
    return path


# -- memory of a process ---------------------------------------------------------------------------
_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")


def memory_of(pid: int) -> dict[str, int]:
    """Rss, Pss and Pss's parts (bytes) of process ``pid``, and its peak RSS (VmHWM)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in _FIELDS:
                out[name] = int(rest.split()[0]) * 1024
    out["VmHWM"] = _status(pid)["VmHWM"]
    return out


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line[:5]] = int(line.split()[1]) * 1024
    return out


class _Sampler(threading.Thread):
    """Peak PSS of some processes (each, and their sum), sampled every 0.2 s."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self.peak_sum = pids, dict.fromkeys(pids, 0), 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            total = 0
            for pid in self.pids:
                try:
                    pss = memory_of(pid)["Pss"]
                except (OSError, KeyError):
                    continue
                self.peak[pid] = max(self.peak[pid], pss)
                total += pss
            self.peak_sum = max(self.peak_sum, total)


# -- one measured process ------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """Construct the loader, take its first batch; report times and wait to be measured."""
    import warnings

    import dali_relabel.loader._loader as loader_module
    from dali_relabel import ReLabelLoader

    warnings.simplefilter("ignore")
    parts: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                parts[name] = round(parts.get(name, 0.0) + time.perf_counter() - start, 3)

        return wrapper

    for attr, name in (
        ("scan_in_store_classes", "listing_s"),
        ("store_rows", "join_s"),
        ("LabelMaps", "maps_s"),
    ):
        setattr(loader_module, attr, timed(name, getattr(loader_module, attr)))
    place = loader_module.LabelMaps

    def placed(*a, **kw):  # what placing the maps costs in memory: before, peak, after
        parts["rss_before_maps"] = _status(os.getpid())["VmRSS"]
        cpu = time.process_time()
        maps = place(*a, **kw)
        parts["maps_cpu_s"] = round(time.process_time() - cpu, 2)  # every thread's
        status = _status(os.getpid())
        parts["peak_rss_placing_maps"], parts["rss_after_maps"] = status["VmHWM"], status["VmRSS"]
        return maps

    loader_module.LabelMaps = placed
    kwargs: dict[str, Any] = {"label_map_memory": args.child_mode}
    if args.table_cache:
        kwargs["label_map_cache"] = args.table_cache
    if args.child_load is not None:
        kwargs["label_map_load"] = args.child_load
    start_all = start = time.perf_counter()
    loader = ReLabelLoader(args.root, args.store, BATCH, device="cpu", **kwargs)
    built = time.perf_counter() - start
    maps = getattr(getattr(loader, "_assemble", None), "_label_maps", None)
    table = getattr(maps, "node_table", None)
    report = {
        "event": "constructed",
        "construction_s": round(built, 3),
        **parts,
        "label_map_memory": loader.label_map_memory,
        "table": None if table is None else {"role": table.role, "path": table.path},
    }
    print(json.dumps(report), flush=True)
    sys.stdin.readline()  # measured
    start = time.perf_counter()
    batch = next(iter(loader))
    first = time.perf_counter() - start
    print(json.dumps({"event": "first_batch", "first_batch_s": round(first, 3)}), flush=True)
    sys.stdin.readline()
    del batch
    wait = getattr(loader, "wait_for_label_maps", None)  # a checkout without it loads at once
    if wait is not None:
        wait()
    ready = time.perf_counter() - start_all
    table = getattr(maps, "node_table", None)  # set once a table read in the background is in use
    ready_report = {
        "event": "table_ready",
        "table_ready_s": round(ready, 3),
        "table": None if table is None else {"role": table.role, "path": table.path},
    }
    print(json.dumps(ready_report), flush=True)
    sys.stdin.readline()


def run_processes(
    args: argparse.Namespace, mode: str, n: int = 1, src: str | None = None
) -> dict[str, Any]:
    """``n`` measured processes of ``mode`` started at once; their reports and memory."""
    env = dict(os.environ)
    if src is not None:  # another checkout's dali_relabel first on the path
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if n > 1:
        env["LOCAL_WORLD_SIZE"] = str(n)
    cmd = [sys.executable, __file__, "--child-mode", mode, "--root", str(args.root)]
    cmd += ["--store", str(args.store), "--cache", str(args.cache)]
    if src is None and args.load is not None:
        cmd += ["--child-load", args.load]
    if mode in ("shared", "auto") and src is None and args.table_cache:
        cmd += ["--table-cache", str(args.table_cache)]
    procs = [
        subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    sampler = _Sampler([p.pid for p in procs])
    sampler.start()
    results: list[dict[str, Any]] = [{} for _ in procs]

    def step(event: str) -> None:
        for p, result in zip(procs, results, strict=True):
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"{mode}: a measured process died (exit {p.wait()})")
            got = json.loads(line)
            if got.pop("event") != event:
                raise RuntimeError(f"{mode}: expected {event}, got {line}")
            result.update(got)
        for p, result in zip(procs, results, strict=True):  # all of them at this point
            result[f"after_{'construction' if event == 'constructed' else event}"] = memory_of(
                p.pid
            )
            p.stdin.write("\n")
            p.stdin.flush()

    try:
        step("constructed")
        step("first_batch")
        step("table_ready")
        for p, result in zip(procs, results, strict=True):
            result["peak_rss"] = memory_of(p.pid)["VmHWM"]
            result["peak_pss"] = sampler.peak[p.pid]
    finally:
        sampler.done.set()
        for p in procs:
            with contextlib.suppress(OSError):
                p.stdin.close()
            p.wait(timeout=120)
    out: dict[str, Any] = {"processes": results} if n > 1 else results[0]
    if n > 1:
        out["node_pss_after_first_batch"] = sum(r["after_first_batch"]["Pss"] for r in results)
        out["node_peak_pss"] = sampler.peak_sum
        shm = max(_shm_table(r) for r in results)
        out["node_memory_after_first_batch"] = shm + sum(
            memory(r, "after_first_batch") - _shm_table(r) for r in results
        )
    return out


def clear_tables(args: argparse.Namespace) -> None:
    """Delete the node tables of the benchmark's store (cold start, and at the end)."""
    from dali_relabel.store import LabelMapStore, clear_node_tables

    clear_node_tables(LabelMapStore.open(args.store), args.table_cache)


def table_bytes(store: Path) -> int:
    from dali_relabel.store import LabelMapStore

    s = LabelMapStore.open(store)
    return len(s) * s.bytes_per_sample


def _gb(x: float) -> float:
    return round(x / 1e9, 3)


def _shm_table(r: dict[str, Any]) -> int:
    """Bytes of the process's shared table when it lives in /dev/shm (RAM whether or not
    a process touched its pages), else 0 (a disk file's pages are evictable cache)."""
    path = (r.get("table") or {}).get("path") or ""
    return os.path.getsize(path) if path.startswith("/dev/shm/") and os.path.exists(path) else 0


def memory(r: dict[str, Any], when: str) -> int:
    """What a process adds to the node's memory: its PSS without /dev/shm pages, plus
    the /dev/shm table whole (count it once per node when summing ranks)."""
    m = r[when]
    return m["Pss"] - m.get("Pss_Shmem", 0) + _shm_table(r)


def summary(name: str, r: dict[str, Any], table: int) -> dict[str, Any]:
    """The headline numbers of one measured process, in GB and seconds."""
    load_peak = None
    if "peak_rss_placing_maps" in r:
        load_peak = round((r["peak_rss_placing_maps"] - r["rss_before_maps"]) / table, 3)
    return {
        "mode": name,
        "construction_s": r["construction_s"],
        "listing_s": r.get("listing_s"),
        "join_s": r.get("join_s"),
        "maps_s": r.get("maps_s"),
        "maps_cpu_s": r.get("maps_cpu_s"),
        "first_batch_s": r["first_batch_s"],
        "rss_gb": _gb(r["after_construction"]["Rss"]),
        "pss_gb": _gb(r["after_construction"]["Pss"]),
        "pss_after_first_batch_gb": _gb(r["after_first_batch"]["Pss"]),
        "peak_rss_gb": _gb(r["peak_rss"]),
        "peak_pss_gb": _gb(r["peak_pss"]),
        "memory_gb": _gb(memory(r, "after_construction")),
        "memory_after_first_batch_gb": _gb(memory(r, "after_first_batch")),
        "table_ready_s": r.get("table_ready_s"),
        "memory_after_table_ready_gb": _gb(memory(r, "after_table_ready")),
        "placing_maps_peak_in_tables": load_peak,
        "table_role": (r.get("table") or {}).get("role"),
    }


def ratios_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each mode's figures over the baseline's ``auto`` (else over ``host``)."""
    keys = ("construction_s", "first_batch_s", "memory_gb", "peak_rss_gb")
    by = {row["mode"]: row for row in rows}
    ref_name = "baseline_auto" if "baseline_auto" in by else "host"
    if ref_name not in by:
        return {}
    ref = by[ref_name]
    return {
        f"{row['mode']}/{ref_name}": {
            k: round(row[k] / ref[k], 3) if ref[k] else None for k in keys
        }
        for row in rows
        if row["mode"] != ref_name
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=320_000)
    p.add_argument("--cache", type=Path, required=True, help="where the tree and store live")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--node-ranks", type=int, default=0, help="also N processes at once")
    p.add_argument("--baseline-src", default=None, help="another dali_relabel checkout")
    p.add_argument("--out", default=None)
    p.add_argument(
        "--load",
        default=None,
        choices=("auto", "now", "background"),
        help="the loader's label_map_load (default: its own default)",
    )
    p.add_argument("--child-load", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--root", default=None, help=argparse.SUPPRESS)
    p.add_argument("--store", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--table-cache", default=None, help="folder of the shared table (default: the loader's)"
    )
    p.add_argument("--keep-tables", action="store_true", help="leave the shared table there")
    p.add_argument("--build-only", action="store_true", help="build the tree and store, stop")
    args = p.parse_args()
    if args.child_mode:
        return child(args)
    if args.samples < CLASSES:
        p.error(f"--samples must be at least {CLASSES} (one image per class), got {args.samples}")
    from _common import emit, machine

    args.cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    args.root = build_tree(args.cache, args.samples)
    args.store = build_store(args.cache, args.root, args.samples)
    built_s = time.perf_counter() - t
    if args.build_only:
        return print(f"tree {args.root} and store {args.store} ready ({built_s:.0f} s)")
    table = table_bytes(args.store)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine(),
        "load_average_at_start": load,
        "samples": args.samples,
        "table_gb": _gb(table),
        "data_build_s": round(built_s, 1),
        "modes": {},
    }
    rows = []
    for mode in args.modes:
        if mode == "shared_cold":
            clear_tables(args)
        real = {"shared_cold": "shared", "shared_warm": "shared"}.get(mode, mode)
        r = run_processes(args, real)
        result["modes"][mode] = r
        rows.append(summary(mode, r, table))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.node_ranks > 1:
        n = args.node_ranks
        clear_tables(args)
        r = run_processes(args, "auto", n)
        result["modes"][f"shared_x{n}"] = r
        per = [summary(f"shared_x{n}", q, table) for q in r["processes"]]
        result["node"] = {
            "ranks": n,
            "roles": [q["table"]["role"] if q["table"] else None for q in r["processes"]],
            "construction_s": [q["construction_s"] for q in per],
            "first_batch_s": [q["first_batch_s"] for q in per],
            "node_pss_gb": _gb(r["node_pss_after_first_batch"]),
            "node_peak_pss_gb": _gb(r["node_peak_pss"]),
            "node_memory_gb": _gb(r["node_memory_after_first_batch"]),
            "node_memory_in_tables": round(r["node_memory_after_first_batch"] / table, 2),
        }
        if "host" in result["modes"]:  # N private tables: N processes like the host one
            host = memory(result["modes"]["host"], "after_first_batch")
            result["node"]["private_tables_memory_gb_estimate"] = _gb(n * host)
            result["node"]["ratio_to_private_tables"] = round(
                r["node_memory_after_first_batch"] / (n * host), 3
            )
        print(json.dumps(result["node"]), file=sys.stderr, flush=True)
    baseline: dict[str, Any] = {}
    if args.baseline_src:
        for mode in ("auto", "stream"):
            r = run_processes(args, mode, src=args.baseline_src)
            baseline[mode] = r
            rows.append(summary(f"baseline_{mode}", r, table))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        result["baseline"] = {"src": args.baseline_src, "modes": baseline}
    if not args.keep_tables:
        clear_tables(args)
    result["table"] = rows
    ratios = ratios_of(rows)
    result["ratios"] = ratios
    emit(result, args.out)


if __name__ == "__main__":
    main()
