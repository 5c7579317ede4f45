"""CutMix and Mixup on ReLabel targets, applied to an assembled batch; label smoothing.

Mixup (Zhang et al., ICLR 2018) blends two images, CutMix (Yun et al., ICCV 2019) pastes
a box of one into the other; both mix the two targets. The parameters and their random
draws follow timm's ``timm/data/mixup.py`` (``Mixup``/``FastCollateMixup``), so that a
timm recipe means the same here:

- the partner of sample i is sample ``B - 1 - i`` (the batch flipped), not a permutation;
- per batch (``mode="batch"``), per pair of partners (``"pair"``) or per sample
  (``"elem"``): with probability ``mix_prob``, CutMix (probability ``switch_prob`` when
  both are configured) with ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``, else Mixup with
  ``lam ~ Beta(mixup_alpha, mixup_alpha)``; ``lam`` is the kept image's share;
- CutMix's box is timm's ``rand_bbox``: sides ``int(S * sqrt(1 - lam))``, centre uniform
  over the image, clipped (or ``rand_bbox_minmax`` with ``cutmix_minmax``), and ``lam``
  becomes the share of pixels kept (``correct_lam``). As in timm >= 1.0.31, whose boxes
  have exactly those sides; timm 1.0.28 cuts ``cy + cut_h // 2`` and draws minmax corners
  one short, a box one pixel smaller on odd sides (before ``correct_lam``, which
  measures the box it drew either way);
- the box shows the partner: ``x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]``
  (:meth:`Mixer.mix_images`, in torch); Mixup is ``lam * x + (1 - lam) * x.flip(0)``.
  Without colour augmentation the loader pastes the boxes in its DALI graph before the
  flips instead (:func:`~dali_relabel.loader._regions.paste_inputs`: the same region of
  the partner, mirrored where the two flips differ) and blends in torch
  (:meth:`Mixer.blend`); with it, each image is coloured first and :meth:`mix_images`
  mixes the coloured batch (a patch keeps its own image's colours, as in timm);
- label smoothing turns each target row ``t`` into ``(1 - eps) * t + eps / C`` whenever
  it is configured, mixed or not (timm's ``mixup_target`` smooths every batch of a
  mixing collate, also after ``mixup_enabled`` is switched off).

The draws come from a generator keyed by (seed, epoch, rank, batch) (:func:`mix_generator`),
so a batch mixes the same way whenever it is made again.

Targets. ``mix_targets="area"`` is the ReLabel paper's: each image's target is its label
map pooled over its crop, and the mixed target is ``lam * t_i + (1 - lam) * t_partner``,
whatever part of each image the box covers. ``"region"`` (the default) follows the
pixels of the mixed image. The box shows the partner's pixels at the same output
position, so the partner's label map is pooled over exactly that box, mapped into the
*partner's* original image through the partner's crop window and mirror. The rest of
the output shows the kept image over its crop minus the box: four disjoint strips (above,
below, left and right of the box), each mapped through the kept image's crop window and
mirror. The kept part's pooled scores are the mean of the map over those strips,
``sum_r a_r * pool(strip r) / sum_r a_r`` with ``a_r`` the strips' pixel areas (each strip
sampled as ROIAlign samples a box; :func:`~dali_relabel.ops.region_pooling` does it in one
pooling). Both parts are sampled over their exact extent: ROIAlign's ``aligned=False``
rule, which widens a box thinner than one map cell to one cell, would let a thin strip
stand for more than itself. Each part becomes a distribution by its own softmax, as a
ReLabel target does, and the two are combined by their shares of the pixels:

    target_i = a_kept * softmax(mean over the kept strips of map_i / T)
             + (1 - a_kept) * softmax(pool(map_partner, box in the partner's crop) / T)

with ``a_kept`` the exact share of pixels kept (the corrected ``lam``; ``correct_lam``
only concerns "area"). Mixup has no region: its samples get "area" targets in both
modes. A box covering the whole crop leaves ``a_kept = 0`` and the partner's target.

Where each part lies in the original images, and how the DALI graph pastes the boxes,
is :mod:`._regions`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dali_relabel import _checks
from dali_relabel.errors import ArgumentError
from dali_relabel.loader._regions import region_boxes
from dali_relabel.loader._transfer import to_device
from dali_relabel.ops import region_pooling, relabel_targets

__all__ = ["MIX_MODES", "MIX_TARGETS", "MixParams", "Mixer", "mix_generator"]

#: What ``mix_targets=`` accepts.
MIX_TARGETS = ("region", "area")
#: What ``mix_mode=`` accepts (timm's ``--mixup-mode``, without "half", which halves
#: the batch).
MIX_MODES = ("batch", "pair", "elem")
# SeedSequence spawn key of the mixing draws: a stream of their own beside the crops'.
_MIX_STREAM = 1


def mix_generator(seed: int, epoch: int, rank: int, batch: int) -> np.random.Generator:
    """The generator of one batch's mixing draws, keyed by (seed, epoch, rank, batch)."""
    sequence = np.random.SeedSequence([seed, epoch, rank, batch], spawn_key=(_MIX_STREAM,))
    return np.random.Generator(np.random.Philox(sequence))


@dataclasses.dataclass(frozen=True)
class MixParams:
    """One batch's mixing, drawn on the host; the partner of sample i is ``B - 1 - i``.

    Attributes:
        lam: float64 [B], the kept image's share (timm's lambda; for CutMix the share of
            pixels kept when ``correct_lam``); 1 where the sample is not mixed.
        cutmix: bool [B], CutMix (else Mixup) where ``lam < 1``.
        boxes: int64 [B, 4], the pasted box (yl, yh, xl, xh) in output pixels, rows
            half-open; all zero where the sample is not cut.
        shared: one lam and box for the whole batch (mode "batch").
    """

    lam: np.ndarray
    cutmix: np.ndarray
    boxes: np.ndarray
    shared: bool

    @property
    def mixed(self) -> bool:
        """Whether any sample of the batch is mixed."""
        return bool((self.lam < 1.0).any())


class Mixer:
    """CutMix/Mixup and label smoothing of a loader's batches (see the module docstring).

    Args:
        num_classes: classes C of the targets.
        mixup_alpha: Mixup's Beta parameter; 0 turns Mixup off. Default: 0.
        cutmix_alpha: CutMix's Beta parameter; 0 turns CutMix off. Default: 0.
        cutmix_minmax: (min, max) of the box's sides as fractions of the image; when set,
            boxes are drawn this way and ``cutmix_alpha`` becomes 1 (timm's rule).
            Default: None.
        mix_prob: probability that a batch (pair, sample) is mixed. Default: 1.0.
        switch_prob: probability of CutMix rather than Mixup when both are on.
            Default: 0.5.
        mode: one of :data:`MIX_MODES`. Default: "batch".
        correct_lam: make CutMix's lambda the share of pixels kept ("area" targets).
            Default: True.
        label_smoothing: eps of ``(1 - eps) * t + eps / C``. Default: 0.
        mix_targets: one of :data:`MIX_TARGETS`. Default: "region".
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        cutmix_minmax: Sequence[float] | None = None,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        correct_lam: bool = True,
        label_smoothing: float = 0.0,
        mix_targets: str = "region",
    ) -> None:
        self.num_classes = _checks.positive_int("num_classes", num_classes)
        self.mixup_alpha = _non_negative("mixup_alpha", mixup_alpha)
        self.cutmix_alpha = _non_negative("cutmix_alpha", cutmix_alpha)
        self.cutmix_minmax = None
        if cutmix_minmax is not None:
            pair = _floats(cutmix_minmax)
            if pair is None or len(pair) != 2 or not 0 <= pair[0] < pair[1] <= 1:
                raise ArgumentError(
                    "cutmix_minmax must be (min, max) fractions of the image side with "
                    f"0 <= min < max <= 1, e.g. (0.2, 0.8), got {cutmix_minmax!r}"
                )
            self.cutmix_minmax = pair
            self.cutmix_alpha = 1.0  # timm forces it, so that a box is always drawn
        self.mix_prob = _probability("mix_prob", mix_prob)
        self.switch_prob = _probability("switch_prob", switch_prob)
        self.mode = _checks.one_of("mix_mode", mode, MIX_MODES)
        self.correct_lam = bool(correct_lam)
        self.label_smoothing = _probability("label_smoothing", label_smoothing)
        self.mix_targets = _checks.one_of("mix_targets", mix_targets, MIX_TARGETS)
        #: Mix batches (timm's ``mixup_enabled``; its train loop switches it off at
        #: ``--mixup-off-epoch``). Smoothing goes on either way.
        self.enabled = True

    @property
    def active(self) -> bool:
        """Whether Mixup or CutMix is configured at all."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    # -- draws ----------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, batch_size: int, height: int, width: int) -> MixParams:
        """One batch's parameters, drawn as timm draws them, in the same order of calls
        (its numpy global RNG replaced by ``rng``).

        Args:
            rng: the batch's generator (:func:`mix_generator`).
            batch_size: samples in the batch.
            height, width: the images' size in pixels.
        """
        if self.mode == "batch":
            lam, cut = self._draw_lam_batch(rng)
            lam, cut = np.full(1, lam), np.full(1, cut)
        else:
            lam, cut = self._draw_lam_elem(
                rng, batch_size // 2 if self.mode == "pair" else batch_size
            )
        boxes = np.zeros((len(lam), 4), dtype=np.int64)
        for i in np.flatnonzero(cut & (lam < 1.0)):
            # lam[i] keeps its dtype: timm computes elem boxes from float32 lambdas
            boxes[i], kept = self._draw_box(rng, lam[i], height, width)
            if self.correct_lam or self.cutmix_minmax is not None:
                lam[i] = kept
        if self.mode == "batch":
            lam, cut, boxes = (np.repeat(a, batch_size, axis=0) for a in (lam, cut, boxes))
        elif self.mode == "pair":  # partners share their draws; an odd middle is not mixed
            middle = (np.ones(1), np.zeros(1, dtype=bool), np.zeros((1, 4), dtype=np.int64))
            parts = zip((lam, cut, boxes), middle, strict=True)
            lam, cut, boxes = (np.concatenate([a, m[: batch_size % 2], a[::-1]]) for a, m in parts)
        lam = lam.astype(np.float64)
        return MixParams(
            lam=lam, cutmix=cut & (lam < 1.0), boxes=boxes, shared=self.mode == "batch"
        )

    def _draw_lam_batch(self, rng: np.random.Generator) -> tuple[float, bool]:
        # timm's Mixup._params_per_batch
        lam, cut = 1.0, False
        if self.enabled and self.active and rng.random() < self.mix_prob:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                cut = bool(rng.random() < self.switch_prob)
                alpha = self.cutmix_alpha if cut else self.mixup_alpha
            elif self.mixup_alpha > 0:
                alpha = self.mixup_alpha
            else:
                cut, alpha = True, self.cutmix_alpha
            lam = float(rng.beta(alpha, alpha))
        return lam, cut

    def _draw_lam_elem(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        # timm's Mixup._params_per_elem, float32 lambdas included
        lam = np.ones(count, dtype=np.float32)
        cut = np.zeros(count, dtype=bool)
        if self.enabled and self.active and count:
            if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
                cut = rng.random(count) < self.switch_prob
                lam_mix = np.where(
                    cut,
                    rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=count),
                    rng.beta(self.mixup_alpha, self.mixup_alpha, size=count),
                )
            elif self.mixup_alpha > 0:
                lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=count)
            else:
                cut = np.ones(count, dtype=bool)
                lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=count)
            lam = np.where(rng.random(count) < self.mix_prob, lam_mix.astype(np.float32), lam)
        return lam, cut

    def _draw_box(
        self, rng: np.random.Generator, lam: np.floating, height: int, width: int
    ) -> tuple[np.ndarray, float]:
        """A box (yl, yh, xl, xh) for ``lam`` and the share of pixels it leaves."""
        if self.cutmix_minmax is not None:  # timm's rand_bbox_minmax
            lo, hi = self.cutmix_minmax
            cut_h = int(rng.integers(int(height * lo), int(height * hi)))
            cut_w = int(rng.integers(int(width * lo), int(width * hi)))
            yl = int(rng.integers(0, height - cut_h + 1))
            xl = int(rng.integers(0, width - cut_w + 1))
            yh, xh = yl + cut_h, xl + cut_w
        else:  # timm's rand_bbox, margin 0
            ratio = np.sqrt(1 - lam)
            cut_h, cut_w = int(height * ratio), int(width * ratio)
            cy = int(rng.integers(0, height))
            cx = int(rng.integers(0, width))
            yl, yh = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, height)
            xl, xh = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, width)
        kept = 1.0 - (yh - yl) * (xh - xl) / float(height * width)
        return np.array([yl, yh, xl, xh], dtype=np.int64), kept

    # -- pixels -----------------------------------------------------------------------
    def mix_images(self, images: Tensor, params: MixParams) -> Tensor:
        """The mixed batch (``images`` [B, 3, H, W], a fresh batch, is written in place
        where the mode allows)."""
        if not params.mixed:
            return images
        if params.shared:  # one box or one lam: timm's _mix_batch, a slice copy for CutMix
            lam = float(params.lam[0])
            if params.cutmix[0]:
                yl, yh, xl, xh = (int(v) for v in params.boxes[0])
                images[:, :, yl:yh, xl:xh] = images[:, :, yl:yh, xl:xh].flip(0)
                return images
            partner = images.flip(0).mul_(1.0 - lam)
            return images.mul_(lam).add_(partner)
        # per sample: weight of the kept image per pixel, 0 inside a CutMix box
        batch, _, height, width = images.shape
        device = images.device
        lam = _to(params.lam, device, images.dtype).view(batch, 1, 1, 1)
        cut = _to(params.cutmix, device).view(batch, 1, 1, 1)
        yl, yh, xl, xh = _to(params.boxes, device).T.reshape(4, batch, 1, 1, 1)
        ys = torch.arange(height, device=device).view(1, 1, height, 1)
        xs = torch.arange(width, device=device).view(1, 1, 1, width)
        inside = (ys >= yl) & (ys < yh) & (xs >= xl) & (xs < xh)
        weight = torch.where(cut, (~inside).to(images.dtype), lam)
        return torch.lerp(images.flip(0), images, weight)

    def blend(self, images: Tensor, params: MixParams) -> Tensor:
        """Mixup's blend of the samples mixed but not cut: the half of :meth:`mix_images`
        that the loader does in torch, its DALI graph having pasted the CutMix boxes
        (:func:`~dali_relabel.loader._regions.paste_inputs`)."""
        mixup = (params.lam < 1.0) & ~params.cutmix
        if not mixup.any():
            return images
        if params.shared:
            lam = float(params.lam[0])
            partner = images.flip(0).mul_(1.0 - lam)
            return images.mul_(lam).add_(partner)
        weight = np.where(mixup, params.lam, 1.0)
        weight = _to(weight, images.device, images.dtype).view(-1, 1, 1, 1)
        return torch.lerp(images.flip(0), images, weight)

    # -- targets ----------------------------------------------------------------------
    def targets(
        self,
        params: MixParams | None,
        *,
        scores: Tensor,
        classes: Tensor,
        crop_boxes: np.ndarray,
        mirrors: np.ndarray,
        size: tuple[int, int],
        temperature: float,
        validate: bool,
    ) -> Tensor:
        """The batch's soft targets [B, C], mixed as ``params`` says and smoothed.

        Args:
            params: the batch's mixing; None for none.
            scores, classes: the batch's label maps [B, K, h, w] on the targets' device.
            crop_boxes: float [B, 4], each crop as normalized (x1, y1, x2, y2) of its
                original image.
            mirrors: bool [B], True where the crop was mirrored.
            size: (height, width) of the output images.
            temperature: divides pooled scores before each softmax.
            validate: check boxes and class ids (see label_pooling).
        """
        device = scores.device
        region = self.mix_targets == "region" and params is not None and bool(params.cutmix.any())
        if not region:
            boxes = _to(crop_boxes, device)
            soft = relabel_targets(
                scores, classes, boxes, self.num_classes, temperature=temperature, validate=validate
            )
            return self.smooth(self.mix_area(soft, params))
        strips, shares, source = region_boxes(params, crop_boxes, mirrors, size)
        batch = len(shares)
        area = shares.sum(1)
        # one pooling of 2B rows: the kept strips (weights: their shares of the kept area)
        # and the pasted box (weight 1, three empty boxes of weight 0 beside it)
        weights = np.zeros((2 * batch, 4))
        np.divide(shares, area[:, None], out=weights[:batch], where=area[:, None] > 0)
        weights[batch:, 0] = 1.0
        boxes = np.concatenate([strips, np.repeat(source[:, None], 4, axis=1)])
        dtype = torch.float32 if scores.dtype != torch.float64 else torch.float64
        pooled = region_pooling(
            torch.cat([scores, scores]),
            torch.cat([classes, classes]),
            _to(boxes, device, dtype),
            _to(weights, device, dtype),
            self.num_classes,
            validate=validate,
        )
        probs = torch.softmax(pooled if temperature == 1.0 else pooled / temperature, dim=1)
        kept, pasted = probs[:batch], probs[batch:].flip(0)  # row i: its partner's box
        share = np.where(params.cutmix, area, params.lam)
        share = _to(share, device, kept.dtype)[:, None]
        return self.smooth(kept * share + pasted * (1.0 - share))

    def mix_area(self, soft: Tensor, params: MixParams | None) -> Tensor:
        """``lam * t_i + (1 - lam) * t_partner`` per row of ``soft`` [B, C] (timm's
        ``mixup_target`` on distributions)."""
        if params is None or not params.mixed:
            return soft
        lam = _to(params.lam, soft.device, soft.dtype)[:, None]
        return soft * lam + soft.flip(0) * (1.0 - lam)

    def smooth(self, targets: Tensor) -> Tensor:
        """``(1 - eps) * t + eps / C`` per row (dim 1); ``targets`` as they are for eps 0."""
        eps = self.label_smoothing
        if eps == 0:
            return targets
        return targets * (1.0 - eps) + eps / self.num_classes

    def __repr__(self) -> str:
        return (
            f"Mixer(num_classes={self.num_classes}, mixup_alpha={self.mixup_alpha}, "
            f"cutmix_alpha={self.cutmix_alpha}, cutmix_minmax={self.cutmix_minmax}, "
            f"mix_prob={self.mix_prob}, switch_prob={self.switch_prob}, mode={self.mode!r}, "
            f"correct_lam={self.correct_lam}, label_smoothing={self.label_smoothing}, "
            f"mix_targets={self.mix_targets!r}, enabled={self.enabled})"
        )


def _to(array: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A host array on ``device`` (from pinned memory on CUDA), in ``dtype``."""
    (tensor,) = to_device([np.asarray(array)], device)
    return tensor if dtype is None else tensor.to(dtype)


def _floats(values) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ArgumentError(f"{name} must be a finite number >= 0 (0 turns it off), got {value!r}")
    return float(value)


def _probability(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ArgumentError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
