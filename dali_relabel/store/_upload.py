"""Writing a store to S3: written locally first, then uploaded so that an interrupted
upload is never taken for a finished store.

``dali-relabel convert SRC s3://bucket/x.zarr`` (and ``generate``) write the store into a
local staging folder exactly as they write a local store (resumable block by block),
then :func:`publish` uploads it:

1. the group's ``zarr.json`` goes up first with ``complete: false``, so that from here
   on readers refuse the URL as an unfinished store (:class:`StoreIncompleteError`);
2. every other object (array metadata, shards, keys) goes up, one PUT each with its
   MD5 (``Content-MD5``: the server refuses a damaged transfer); objects already there
   whose ETag is that MD5 are skipped, which is what makes a rerun after an
   interruption resume (a bucket encrypting with KMS gives other ETags: everything is
   sent again);
3. one LIST checks that every object is there, with its size;
4. the real ``zarr.json`` (``complete: true``) goes up last, in one PUT.

A PUT is atomic on S3 (a reader sees the old object or the new one, whole; S3 is
strongly consistent since December 2020), so ``complete: true`` can only be read once
everything else has landed. convert and generate remove their staging folder once the
store is published. A store written elsewhere is uploaded the same way with
``publish(local, url)``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dali_relabel.errors import (
    StorageAccessError,
    StoreIncompleteError,
    StoreMismatchError,
)
from dali_relabel.store._format import ARRAYS, SOURCES, STORE_FORMAT, check_location
from dali_relabel.store._reader import LabelMapStore
from dali_relabel.store._s3 import S3Location

__all__ = [
    "STAGING_ENV",
    "finish_output",
    "output_folder",
    "publish",
    "published",
    "staging_folder",
]

#: The environment variable naming the folder of local staging copies (and of the other
#: caches of dali_relabel): ``$DALI_RELABEL_CACHE/staging``, default ``~/.cache/dali_relabel``.
STAGING_ENV = "DALI_RELABEL_CACHE"
# The folders of a store that are uploaded (the group's zarr.json is handled apart).
_FOLDERS = (*ARRAYS, "keys", "blocks_done", SOURCES)
_THREADS = 16


def _remote_attributes(location: S3Location) -> dict[str, Any] | None:
    raw = location.get("zarr.json")
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        attrs = doc.get("attributes")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        attrs = None
    if not isinstance(attrs, dict) or attrs.get("format") != STORE_FORMAT:
        raise StoreMismatchError(
            f"{location.url} holds a zarr.json that is not a label map store's; choose "
            f"another URL, or delete it (aws s3 rm --recursive {location.url})"
        )
    return attrs


def _same(remote: Mapping[str, Any], local: Mapping[str, Any], url: str) -> None:
    """Refuse a store of other attributes at the target URL."""
    differ = sorted(
        name
        for name in set(remote) | set(local)
        if name != "complete" and remote.get(name) != local.get(name)
    )
    if differ:
        raise StoreMismatchError(
            f"{url} holds a label map store of other parameters (attributes "
            f"{', '.join(differ[:5])} differ); choose another URL, or delete it "
            f"(aws s3 rm --recursive {url})"
        )


def staging_folder(url: str, storage_options: Mapping[str, Any] | None = None) -> Path:
    """The local folder a store bound for ``url`` is written into before its upload.

    Checks the URL and what is there first: a bucket that cannot be reached, or objects
    that are not a label map store, are refused before any work is done.
    """
    location = S3Location.parse(check_location(str(url)), storage_options)
    if _remote_attributes(location) is None and location.listing():
        raise StoreMismatchError(
            f"{location.url} holds objects but no zarr.json: not a label map store; choose "
            f"another URL, or delete them (aws s3 rm --recursive {location.url})"
        )
    cache = os.environ.get(STAGING_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "dali_relabel"
    )
    digest = hashlib.sha256(location.url.encode()).hexdigest()[:12]
    name = location.prefix.rsplit("/", 1)[-1]
    return Path(cache) / "staging" / f"{location.bucket}-{digest}-{name}"


def published(
    url: str,
    attrs: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> LabelMapStore | None:
    """The finished store at ``url`` when it has the attributes ``attrs`` (a rerun after
    its upload: nothing to do), else None; a store of other attributes is refused."""
    location = S3Location.parse(url, storage_options)
    remote = _remote_attributes(location)
    if remote is None:
        return None
    _same(remote, attrs, location.url)
    if remote.get("complete") is not True:
        return None
    return LabelMapStore.open(location.url, storage_options=storage_options)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(local: Path) -> dict[str, Path]:
    """``relative key -> file`` of everything of the store but the group's zarr.json."""
    out = {}
    for folder in _FOLDERS:
        for path in sorted((local / folder).rglob("*")):
            if path.is_file():
                out[path.relative_to(local).as_posix()] = path
    return out


def publish(
    local: str | os.PathLike,
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    remove_local: bool = False,
) -> LabelMapStore:
    """Upload the finished local store ``local`` to ``url`` (the order in the module's
    docstring) and return the store there, opened; resumable.

    Args:
        local: a finished store (its writer finalized).
        url: ``s3://bucket/path``; an unfinished upload of the same store there is
            resumed, a store of other attributes refused.
        storage_options: S3 options (:meth:`LabelMapStore.open`). Default: None.
        progress: show a progress bar. Default: True.
        remove_local: delete ``local`` once the store is published (what convert and
            generate do with their staging folder). Default: False.
    """
    from tqdm.auto import tqdm

    local = Path(local)
    location = S3Location.parse(url, storage_options)
    final = (local / "zarr.json").read_bytes()
    doc = json.loads(final)
    attrs = doc["attributes"]
    if attrs.get("complete") is not True:
        raise StoreIncompleteError(
            f"{local} is not finished; finish writing it before it is uploaded to {url}"
        )
    remote = _remote_attributes(location)
    if remote is not None:
        _same(remote, attrs, location.url)
    files = _files(local)
    listing = location.listing()
    md5 = {rel: _md5(path) for rel, path in files.items() if rel in listing}
    todo = [rel for rel in files if rel not in listing or listing[rel][1] != md5[rel]]
    if remote is not None and remote.get("complete") is True and not todo:
        store = LabelMapStore.open(location.url, storage_options=storage_options)
    else:
        # 1. from here on, readers refuse the URL as unfinished
        pending = {**doc, "attributes": {**attrs, "complete": False}}
        location.put("zarr.json", json.dumps(pending, indent=2).encode())
        # 2. the objects that are not there yet
        total = sum(files[rel].stat().st_size for rel in todo)
        with (
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"uploading to {location.url}",
                disable=not progress,
            ) as bar,
            cf.ThreadPoolExecutor(_THREADS) as pool,
        ):

            def put(rel: str) -> None:
                data = files[rel].read_bytes()
                location.put(rel, data)
                bar.update(len(data))

            list(pool.map(put, todo))
        # 3. everything is there, whole
        listing = location.listing()
        for rel, path in files.items():
            size = listing.get(rel, (None, ""))[0]
            if size != path.stat().st_size:
                raise StorageAccessError(
                    f"upload to {location.url}: {location.url}/{rel} did not land whole "
                    f"(size {size}, expected {path.stat().st_size:,}); run the same command "
                    "again to resume the upload"
                )
        # 4. finished: one PUT of the real document
        location.put("zarr.json", final)
        store = LabelMapStore.open(location.url, storage_options=storage_options)
    if remove_local:
        shutil.rmtree(local)
    return store


# -- what the makers (convert, generate, ensemble) share -----------------------------------
def output_folder(
    out: str | os.PathLike, storage_options: Mapping[str, Any] | None = None
) -> tuple[str, str | None]:
    """(the folder to write, the ``s3://`` target or None) of a maker's output ``out``."""
    if str(out).startswith("s3://"):
        return str(staging_folder(str(out), storage_options)), str(out)
    return os.fspath(out), None


def finish_output(
    store: LabelMapStore,
    target: str | None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> LabelMapStore:
    """A maker's finished ``store``, uploaded to ``target`` (its staging folder removed)
    when the output is on S3."""
    if target is None:
        return store
    return publish(
        store.path,
        target,
        storage_options=storage_options,
        progress=progress,
        remove_local=True,
    )
