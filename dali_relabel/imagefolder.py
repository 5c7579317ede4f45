"""The sample list of an ImageFolder tree: files, keys, class indices, and bad-file checks.

Follows ``torchvision.datasets.ImageFolder``: every folder directly under the root is a
class, folders sorted by name give the class order (or a class table given as
``class_names``), and the images inside a class folder (at any depth) are its samples,
in sorted order. A sample's *key* is its path relative to the root without the
extension (``n02124075/n02124075_3``), the key a label-map store records for it. The
loader reads the files in the order this list gives them and uses positions in it, the
*sample indices*, to join images with labels and label maps. Nothing here knows about
label maps: the loader joins keys to store rows (:mod:`dali_relabel.loader`).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from dali_relabel._walk import walk_tree
from dali_relabel.errors import ArgumentError, ClassTableError, NotFoundError

__all__ = [
    "IMG_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageFolderList",
    "check_image_file",
    "check_image_header",
    "find_bad_images",
    "scan_image_folder",
]

#: Extensions listed as images (torchvision's list); DALI decodes all of them.
IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".ppm",
    ".bmp",
    ".pgm",
    ".tif",
    ".tiff",
    ".webp",
)

#: Pixels an image may declare in its header: Pillow's default ``Image.MAX_IMAGE_PIXELS``
#: (about 9,459 x 9,459). A 1.5 kB JPEG can declare 20,000 x 20,000 and be decoded into
#: gigabytes of grey.
MAX_IMAGE_PIXELS = 89_478_485

# JPEG start-of-frame markers (baseline, progressive, lossless...), which hold the size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}

# Leading bytes of the formats DALI's image decoders read (see fn.decoders.image).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"P1", "pnm"),
    (b"P2", "pnm"),
    (b"P3", "pnm"),
    (b"P4", "pnm"),
    (b"P5", "pnm"),
    (b"P6", "pnm"),
)


def _scan(
    root: str, extensions: Sequence[str]
) -> tuple[list[str], list[str], list[str], list[tuple[str, int]]]:
    """(class folders, keys, paths relative to root, (class folder, images) per folder
    listed) of the tree, in sample order.

    One walk (:func:`~dali_relabel._walk.walk_tree`, strings only) and list
    comprehensions per folder (ImageNet's 1.28 M keys in about a second); the order is
    ImageFolder's: class folders by name, then within a class by folder, then by name.
    """
    found = [
        (rel.split("/", 1)[0], rel, names) for rel, names in walk_tree(root, extensions) if rel
    ]
    found.sort(key=lambda item: (item[0], item[1][len(item[0]) :]))
    classes = sorted({cls for cls, _, _ in found})
    keys: list[str] = []
    relative: list[str] = []
    groups: list[tuple[str, int]] = []
    for cls, rel, names in found:
        prefix = rel + "/"
        # os.path.splitext's stem for names that end with an extension (a dot inside)
        keys.extend([prefix + (name.rpartition(".")[0] or name) for name in names])
        relative.extend([prefix + name for name in names])
        groups.append((cls, len(names)))
    return classes, keys, relative, groups


def _check_root(root: str | Path) -> str:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotFoundError(f"image folder {root!r} does not exist or is not a folder")
    return root


def scan_image_folder(
    root: str | Path, *, extensions: Sequence[str] = IMG_EXTENSIONS
) -> list[tuple[str, str]]:
    """(key, path) of every image in the class folders under ``root``, in sample order.

    Args:
        root: an ImageFolder tree (class folders directly under it, e.g. ``imagenet/train``).
        extensions: file name endings counted as images, case-insensitive.
            Default: :data:`IMG_EXTENSIONS`.
    """
    top = _check_root(root)
    _, keys, relative, _ = _scan(top, extensions)
    return [(key, os.path.join(top, rel)) for key, rel in zip(keys, relative, strict=True)]


class ImageFolderList:
    """The samples of an ImageFolder tree (``ReLabelLoader.dataset`` is one, whose
    ``dataset[i]`` decodes the image: :class:`~dali_relabel.loader._dataset.LoaderDataset`).

    Make one with :meth:`scan`. It holds no images: ``samples[i]`` and ``list[i]`` are
    ``(path, class_index)``. Attributes follow ``torchvision.datasets.ImageFolder``:

    Attributes:
        root: the tree's root folder.
        classes: class identifiers in class-index order. The folder names when no class
            table is given, else that table (e.g. the 1,000 ImageNet WordNet ids of a
            label-map store), so that ``classes[label] == folder`` always holds.
        class_to_idx: class identifier -> class index.
        folders: the class folder names found under ``root``, sorted.
        samples: ``(path, class_index)`` per sample, in sample order.
        paths: the path (str) of every sample, in sample order.
        targets: class index per sample.
        keys: sample keys (relative path without extension), the join key of label maps.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str],
        folders: Sequence[str],
        keys: Sequence[str],
        relative: Sequence[str],
        targets: Sequence[int],
    ) -> None:
        self.root = Path(root)
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.folders = list(folders)
        self.keys = list(keys)
        self._relative = list(relative)
        self.targets = list(targets)
        self._paths: list[str] | None = None

    @classmethod
    def scan(
        cls,
        root: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
    ) -> ImageFolderList:
        """List the images under ``root`` and give each its class index.

        Args:
            root: an ImageFolder tree (class folders directly under it).
            class_names: the class table of the labels; each folder's class index is its
                position there (a label-map store's ``class_names``). Default: None (the
                sorted folder names, as ImageFolder).
            extensions: file name endings counted as images. Default: :data:`IMG_EXTENSIONS`.
        """
        top = _check_root(root)
        folders, keys, relative, groups = _scan(top, extensions)
        if not folders:
            raise NotFoundError(
                f"image folder {top!r} has no class folders; root must be an ImageFolder "
                "tree with one folder per class (e.g. imagenet/train/n01440764/*.JPEG)"
            )
        used = {folder for folder, count in groups if count}
        empty = [f for f in folders if f not in used]
        if empty:
            raise NotFoundError(
                f"{len(empty):,} of {len(folders):,} class folders under {top!r} hold no "
                f"images with an extension in {tuple(extensions)} (first: {', '.join(empty[:3])})"
            )
        classes = list(folders) if class_names is None else list(class_names)
        class_to_idx = {name: i for i, name in enumerate(classes)}
        unknown = [f for f in folders if f not in class_to_idx]
        if unknown:
            raise ClassTableError(
                f"{len(unknown):,} class folders under {top!r} are not in the class table "
                f"of {len(classes):,} classes (first: {', '.join(unknown[:3])}; the table "
                f"starts {', '.join(classes[:3])})"
            )
        # keys of two folders differ in their folder: only a folder can repeat a key
        start, repeats = 0, False
        for _, count in groups:
            repeats = repeats or len(set(keys[start : start + count])) != count
            start += count
        if repeats:
            seen: set[str] = set()
            dupes = [k for k in keys if k in seen or seen.add(k)]
            raise ArgumentError(
                f"{len(dupes):,} images under {top!r} share a path without extension with "
                f"another image (first: {dupes[0]}); keys must be unique to join label maps"
            )
        targets: list[int] = []
        for folder, count in groups:
            targets.extend([class_to_idx[folder]] * count)
        return cls(top, classes, folders, keys, relative, targets)

    @property
    def paths(self) -> list[str]:
        """The path of every sample (``root`` joined with its relative path)."""
        if self._paths is None:
            root = os.path.join(os.fspath(self.root), "")  # ends with the separator once
            self._paths = [root + rel for rel in self._relative]  # os.path.join, 1.28 M times
        return self._paths

    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.paths, self.targets, strict=True))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.paths[index], self.targets[index]

    def relative_paths(self) -> list[str]:
        """Sample paths relative to :attr:`root`, with ``/``."""
        return list(self._relative)

    def subset(self, keep: Iterable[int]) -> ImageFolderList:
        """The samples at positions ``keep`` (renumbered from 0), same class table."""
        keep = list(keep)
        return ImageFolderList(
            self.root,
            self.classes,
            self.folders,
            [self.keys[i] for i in keep],
            [self._relative[i] for i in keep],
            [self.targets[i] for i in keep],
        )

    def __repr__(self) -> str:
        return (
            f"ImageFolderList({str(self.root)!r}, samples={len(self)}, "
            f"folders={len(self.folders)}, classes={len(self.classes)})"
        )


def check_image_file(
    path: str | Path, *, full: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> str | None:
    """Why DALI would fail to decode ``path`` (or should not), or None when it looks fine.

    The cheap check reads the first bytes (the format's signature and, for JPEG and PNG,
    the size the header declares) and, for JPEG, the last ones: a JPEG cut short lacks
    its end-of-image marker, and only then is it decoded fully with Pillow to tell a
    truncated file from a merely untidy end. Other formats are opened and verified by
    Pillow. ``full=True`` decodes every file.

    Args:
        path: the image file.
        full: decode the whole image with Pillow whatever the checks say. Default: False.
        max_pixels: refuse an image whose header declares more pixels (width x height);
            None for no limit. Default: :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4096)
            f.seek(max(0, size - 64))
            tail = f.read()
            kind = _kind(head)
            declared = _jpeg_size(f, head) if kind == "jpeg" else _png_size(head, kind)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty"
    if kind is None:
        return f"is not an image (starts with {head[:8]!r})"
    if declared is not None and (reason := _too_large(declared, max_pixels)):
        return reason
    if kind == "jpeg" and not full and b"\xff\xd9" in tail:
        return None
    return _pillow_check(path, decode=full or kind == "jpeg", max_pixels=max_pixels)


def check_image_header(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why the size that ``path``'s header declares is refused, or None.

    The pixel limit of :func:`check_image_file` alone, at the cost of reading the first
    bytes: JPEG's start-of-frame marker and PNG's IHDR are read directly, other formats'
    headers by Pillow (without decoding). A file whose size cannot be read passes: it is
    no decompression bomb, and a decoder that fails on it says so.

    Args:
        path: the image file.
        max_pixels: the most pixels (width x height) the header may declare.
            Default: :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            kind = _kind(head)
            declared = _jpeg_size(f, head) if kind == "jpeg" else _png_size(head, kind)
    except OSError:
        return None
    if declared is not None or kind in (None, "jpeg", "png"):
        return None if declared is None else _too_large(declared, max_pixels)
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _too_large(im.size, max_pixels)
    except Image.DecompressionBombError as e:  # Pillow's own limit (twice its default)
        return f"declares too many pixels in its header ({e})"
    except Exception:  # Pillow raises many types for broken files: the decoder names it
        return None


def _kind(head: bytes) -> str | None:
    """The image format that the first bytes of a file announce, or None."""
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "webp"
    return kind


def _png_size(head: bytes, kind: str | None) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, the first one."""
    if kind != "png" or len(head) < 24:
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _too_large(size: tuple[int, int], max_pixels: int | None) -> str | None:
    w, h = size
    if max_pixels is None or w * h <= max_pixels:
        return None
    return (
        f"declares {w:,} x {h:,} = {w * h:,} pixels in its header, more than the limit of "
        f"{max_pixels:,} (max_image_pixels): a damaged header or a decompression bomb"
    )


def _jpeg_size(f, head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame marker, reading no further than it."""
    data, pos = head, 2
    while True:
        while pos + 9 > len(data):  # the marker, its length and the size: read on
            more = f.read(65536) if len(data) < (1 << 22) else b""
            if not more:
                return None
            data += more
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF:
            h = int.from_bytes(data[pos + 5 : pos + 7], "big")
            w = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return w, h
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def _pillow_check(path: str | Path, *, decode: bool, max_pixels: int | None) -> str | None:
    # With ImageFile.LOAD_TRUNCATED_IMAGES set (by the calling script) Pillow accepts
    # truncated files; DALI then names such a file when it fails on it.
    from PIL import Image

    try:
        with Image.open(path) as im:
            if reason := _too_large(im.size, max_pixels):
                return reason
            im.load() if decode else im.verify()
    except Image.DecompressionBombError as e:  # Pillow's own limit (twice its default)
        return f"declares too many pixels in its header ({e})"
    except Exception as e:  # Pillow raises many types for broken files
        return f"cannot be decoded ({type(e).__name__}: {e})"
    return None


def find_bad_images(
    paths: Sequence[str | Path],
    *,
    full: bool = False,
    workers: int = 16,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> list[tuple[int, str]]:
    """(position, reason) of every file in ``paths`` that :func:`check_image_file` rejects.

    Args:
        paths: image files.
        full: decode every file fully (slow: ImageNet takes about 10 CPU-minutes).
            Default: False.
        workers: threads reading files (I/O bound). Default: 16.
        max_pixels: as in :func:`check_image_file`. Default: :data:`MAX_IMAGE_PIXELS`.
    """

    def check(path: str | Path) -> str | None:
        return check_image_file(path, full=full, max_pixels=max_pixels)

    with cf.ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(check, paths, chunksize=64))
    return [(i, r) for i, r in enumerate(reasons) if r is not None]
