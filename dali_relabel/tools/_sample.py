"""Real-photo sample data in ImageNet's layout, made at run time without downloads.

The photos are the colour pictures that scikit-image ships (chelsea the cat, a
cup of coffee, an astronaut, a rocket, a motorcycle). Each sample image is a random
crop of one of them, rescaled so that its longer side lies in 350-500 px (ImageNet's
typical size) and saved as JPEG at quality 85-95, all deterministic by seed. Each
photo stands for the ImageNet class that best describes it, so that the WordNet ids
and ImageNet indices are real ones and a real ImageNet teacher can label them.

Optionally the matching label maps in the official ReLabel release format are
written too: one ``torch.save`` of a float32 tensor [2, k, W, H] per image
(``[0]`` top-k logits, ``[1]`` their class indices as floats), synthetic but
structured: the image's own class dominates a blob at a random place, so that
pooling over different crops gives different targets. They are written in the
release's *layout* too, the map's last axis along the image's height (docs/FORMAT.md,
"The official layout"), so that ``dali-relabel convert`` with its default
``--layout official`` stores them in image orientation, as it does the release's:
no option to remember, and the sample exercises the same path as the real maps.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from dali_relabel import _checks
from dali_relabel._deps import require
from dali_relabel.constants import DEFAULT_GRID, DEFAULT_TOPK, IMAGENET_NUM_CLASSES
from dali_relabel.errors import ArgumentError

__all__ = ["PHOTOS", "SampleData", "load_photo", "make_sample_data", "synthetic_label_map"]

#: scikit-image photo -> (WordNet id, ImageNet-1k index) of the class it shows.
PHOTOS: dict[str, tuple[str, int]] = {
    "chelsea": ("n02124075", 285),  # Egyptian cat
    "coffee": ("n07920052", 967),  # espresso
    "astronaut": ("n04350905", 834),  # suit
    "rocket": ("n03773504", 657),  # missile
    "motorcycle": ("n03791053", 670),  # motor scooter
}


@dataclasses.dataclass(frozen=True)
class SampleData:
    """Where :func:`make_sample_data` wrote its files.

    Attributes:
        root: the folder given to :func:`make_sample_data`.
        train: the ImageFolder tree ``train/<wnid>/<wnid>_<n>.JPEG``.
        label_maps: the official-format ``.pt`` tree ``<wnid>/<stem>.pt``, or None.
        keys: sample keys (relative image path without extension), sorted.
        labels: ImageNet-1k index of each key's class.
    """

    root: Path
    train: Path
    label_maps: Path | None
    keys: tuple[str, ...]
    labels: tuple[int, ...]


def load_photo(name: str) -> np.ndarray:
    """Return one of scikit-image's colour photos as uint8 [H, W, 3].

    Args:
        name: a key of :data:`PHOTOS`.
    """
    _checks.one_of("photo", name, sorted(PHOTOS))
    skimage_data = require("skimage.data", extra="tools", needed_by="the sample photos")
    if name == "motorcycle":
        photo = skimage_data.stereo_motorcycle()[0]  # the left view of a stereo pair
    else:
        photo = getattr(skimage_data, name)()
    return np.ascontiguousarray(photo[..., :3])


def _random_view(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (60-100 % of each side) rescaled to a longer side of 350-500 px."""
    from PIL import Image

    h, w = photo.shape[:2]
    ch = int(h * rng.uniform(0.6, 1.0))
    cw = int(w * rng.uniform(0.6, 1.0))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(photo[top : top + ch, left : left + cw])
    longer = int(rng.integers(350, 501))
    scale = longer / max(ch, cw)
    size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
    return np.asarray(crop.resize(size, Image.BICUBIC))


def synthetic_label_map(
    label: int,
    rng: np.random.Generator,
    *,
    k: int,
    grid: tuple[int, int],
    num_classes: int,
) -> np.ndarray:
    """A synthetic label map in the official release's format, float32 [2, k, H, W].

    ``[0]`` holds top-k logits sorted per cell, ``[1]`` their class indices as floats;
    ``label`` dominates a blob at a random place, so that pooling over different crops
    gives different targets.

    Args:
        label: the image's class, the top class inside the blob.
        rng: where the blob, the other classes and the noise come from.
        k: classes per cell.
        grid: (H, W) of the map.
        num_classes: the number of classes the others are drawn from.
    """
    gh, gw = grid
    others = rng.choice(np.delete(np.arange(num_classes), label), size=k - 1, replace=False)
    cy, cx = rng.uniform(0, gh), rng.uniform(0, gw)
    yy, xx = np.mgrid[0:gh, 0:gw]
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.3 * max(gh, gw)) ** 2))
    logits = np.empty((k, gh, gw), dtype=np.float64)
    logits[0] = 2.0 + 8.0 * blob + rng.normal(0, 0.3, (gh, gw))
    logits[1:] = rng.normal(3.0, 1.0, (k - 1, 1, 1)) + rng.normal(0, 0.5, (k - 1, gh, gw))
    classes = np.empty((k, gh, gw), dtype=np.int64)
    classes[0] = label
    classes[1:] = others[:, None, None]
    # The release sorts each cell's classes by descending score.
    order = np.argsort(-logits, axis=0, kind="stable")
    logits = np.take_along_axis(logits, order, axis=0)
    classes = np.take_along_axis(classes, order, axis=0)
    return np.stack([logits, classes.astype(np.float64)]).astype(np.float32)


def make_sample_data(
    out: str | Path,
    *,
    images_per_class: int = 8,
    seed: int = 0,
    photos: tuple[str, ...] | None = None,
    label_maps: bool = False,
    k: int = DEFAULT_TOPK,
    grid: tuple[int, int] = DEFAULT_GRID,
    num_classes: int = IMAGENET_NUM_CLASSES,
) -> SampleData:
    """Write an ImageNet-layout folder of real photos (and optional official label maps).

    Files land in ``out/train/<wnid>/<wnid>_<n>.JPEG`` and, with ``label_maps``,
    ``out/label_maps/<wnid>/<wnid>_<n>.pt``. The same arguments give the same bytes; a
    file that already holds them is left as it is (its modification time too, so that
    label maps generated from it stay current). Sample files of an earlier call that
    this one does not write (more images per class, other photos, maps not asked for)
    are removed: the folder never holds images without matching maps or the reverse.

    Args:
        out: folder to write into (created; sample files in it are replaced).
        images_per_class: images per photo/class. Default: 8.
        seed: seed of every random choice. Default: 0.
        photos: which photos (keys of :data:`PHOTOS`). Default: all five.
        label_maps: also write official-format ``.pt`` label maps, in the release's
            layout (H and W swapped; convert's default undoes it). Default: False.
        k: top-k classes per cell of those maps. Default: 5.
        grid: (H, W) of those maps. Default: (15, 15).
        num_classes: classes of those maps. Default: 1000.
    """
    from PIL import Image

    if images_per_class < 1:
        raise ArgumentError(f"images_per_class must be >= 1, got {images_per_class}")
    photos = tuple(PHOTOS) if photos is None else tuple(photos)
    unknown = [p for p in photos if p not in PHOTOS]
    if unknown:
        raise ArgumentError(f"photos must be keys of {sorted(PHOTOS)}, got unknown {unknown}")
    if label_maps:
        too_big = [p for p in photos if PHOTOS[p][1] >= num_classes]
        if too_big or k > num_classes:
            raise ArgumentError(
                f"num_classes={num_classes} is too small for k={k} and the photos' ImageNet "
                f"classes {[PHOTOS[p][1] for p in photos]}; use num_classes=1000"
            )
    root = Path(out)
    train = root / "train"
    map_root = root / "label_maps" if label_maps else None
    rng = np.random.default_rng(seed)
    keys: list[str] = []
    labels: list[int] = []
    written: set[Path] = set()
    for name in sorted(photos, key=lambda p: PHOTOS[p][0]):
        wnid, label = PHOTOS[name]
        photo = load_photo(name)
        (train / wnid).mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class):
            stem = f"{wnid}_{n}"
            view = _random_view(photo, rng)
            buf = io.BytesIO()
            Image.fromarray(view).save(buf, "JPEG", quality=int(rng.integers(85, 96)))
            written.add(_write_if_changed(train / wnid / f"{stem}.JPEG", buf.getvalue()))
            if map_root is not None:
                import torch

                (map_root / wnid).mkdir(parents=True, exist_ok=True)
                lm = synthetic_label_map(label, rng, k=k, grid=grid, num_classes=num_classes)
                official = np.ascontiguousarray(lm.swapaxes(-1, -2))  # the release's layout
                buf = io.BytesIO()
                torch.save(torch.from_numpy(official), buf)
                written.add(_write_if_changed(map_root / wnid / f"{stem}.pt", buf.getvalue()))
            keys.append(f"{wnid}/{stem}")
            labels.append(label)
    _remove_earlier(root, written)
    return SampleData(
        root=root, train=train, label_maps=map_root, keys=tuple(keys), labels=tuple(labels)
    )


def _write_if_changed(path: Path, data: bytes) -> Path:
    if not (path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # never half a file under the final name
    return path


def _remove_earlier(root: Path, written: set[Path]) -> None:
    """Remove the sample files (and only those) of an earlier call that this one did not
    write: ``train/<wnid>/<wnid>_<n>.JPEG`` and ``label_maps/<wnid>/<wnid>_<n>.pt``."""
    for wnid, _ in PHOTOS.values():
        for folder, suffix in (
            (root / "train" / wnid, ".JPEG"),
            (root / "label_maps" / wnid, ".pt"),
        ):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                number = path.name[len(wnid) + 1 : -len(suffix)]
                ours = path.name.startswith(f"{wnid}_") and path.name.endswith(suffix)
                if ours and number.isdigit() and path not in written:
                    path.unlink()
