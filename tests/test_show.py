"""`dali-relabel show`: the picture of a label map and of a crop's targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dali_relabel.cli import main
from dali_relabel.ops.label_pooling import relabel_targets
from dali_relabel.tools import class_labels, parse_box, show_label_map


def test_picture_with_box_shows_legend_and_pooled_targets(sample_store, sample_data, tmp_path):
    key = sample_data.keys[0]  # an Egyptian cat (285) image
    out = tmp_path / "show.png"
    fig = show_label_map(sample_store, sample_data.train, key, box="0.1,0.2,0.6,0.9", out=out)
    image = np.asarray(Image.open(out))
    assert image.shape[0] > 400 and image.shape[1] > 900
    ax, bars = fig.axes[:2]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(text.startswith("Egyptian cat (285): ") for text in legend)
    # The bars are the crop's top-5 targets, best on top.
    s, c = sample_store.read_torch([sample_store.index(key)])
    probs = relabel_targets(s.float(), c, torch.tensor([[0.1, 0.2, 0.6, 0.9]]), 1000)[0]
    top = probs.topk(5)
    heights = [p.get_width() for p in bars.patches][::-1]
    np.testing.assert_allclose(heights, top.values.numpy(), rtol=1e-5)
    names = [t.get_text() for t in bars.get_yticklabels()][::-1]
    labels = class_labels(sample_store)
    # Classes outside every cell's top-k tie at the bottom; compare the ones that do not.
    distinct = int((top.values > probs.topk(6).values[-1] + 1e-7).sum())
    assert distinct >= 2
    assert names[:distinct] == [labels[i] for i in top.indices.tolist()][:distinct]


def test_picture_without_box_and_cli(sample_store, sample_data, tmp_path, capsys):
    fig = show_label_map(sample_store.path, sample_data.train, sample_data.keys[-1])
    assert len(fig.axes) == 1
    out = tmp_path / "cli.png"
    args = ["show", sample_store.path, "--images", str(sample_data.train), "-o", str(out)]
    assert main([*args, "--key", sample_data.keys[3]]) == 0
    assert out.stat().st_size > 10_000
    assert main([*args, "--key", "n00000000/nothing"]) == 1
    assert "has no key 'n00000000/nothing'" in capsys.readouterr().err
    assert main([*args, "--key", sample_data.keys[3], "--box", "0.5,0.5,0.2,1"]) == 1
    assert "box must satisfy 0 <= x1 < x2 <= 1" in capsys.readouterr().err


def test_parse_box():
    assert parse_box("0,0.25,0.5,1") == (0.0, 0.25, 0.5, 1.0)
    for bad in ("0,0,1", "a,b,c,d", "0,0,1.5,1", "0.6,0,0.5,1"):
        with pytest.raises(ValueError, match="box must"):
            parse_box(bad)


def test_class_labels_fall_back_to_indices(tmp_path):
    from dali_relabel.store import LabelMapWriter

    writer = LabelMapWriter.create(tmp_path / "s.zarr", ["a/b"], num_classes=3, k=1, grid=(1, 1))
    writer.write_block(0, np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 1, 1), np.int64))
    assert class_labels(writer.finalize()) == ["0", "1", "2"]


def test_drawing_leaves_pyplot_alone(sample_store, sample_data):
    import matplotlib.pyplot as plt

    # pyplot keeps every figure it makes until closed: a loop over keys would pile them up.
    before = plt.get_fignums()
    for key in sample_data.keys[:2]:
        show_label_map(sample_store, sample_data.train, key, box="0,0,0.5,0.5")
    assert plt.get_fignums() == before


def test_out_without_extension_or_a_folder_is_reported_where_it_lands(
    sample_store, sample_data, tmp_path, capsys
):
    key = "n02124075/n02124075_3"
    base = ["show", sample_store.path, "--images", str(sample_data.train), "--key", key]
    assert main([*base, "-o", str(tmp_path / "picture")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'picture.png'}"
    assert (tmp_path / "picture.png").is_file() and not (tmp_path / "picture").exists()
    (tmp_path / "pictures").mkdir()
    assert main([*base, "-o", str(tmp_path / "pictures")]) == 0
    written = tmp_path / "pictures" / "n02124075__n02124075_3.png"
    assert capsys.readouterr().out.strip() == f"wrote {written}"
    with Image.open(written) as im:
        assert im.format == "PNG"
