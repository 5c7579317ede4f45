"""Teachers: the FCN conversion against references, real-photo classes, loading and misuse."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms.v2 import functional as TF

from dali_relabel.labelmaps import (
    DEFAULT_TEACHER,
    dense_teacher,
    file_sha256,
    load_teacher,
)
from dali_relabel.tools import load_photo


@pytest.fixture(scope="module", autouse=True)
def _flush_denormals():
    # Randomly initialized nets drift into denormal floats, which make CPU convs 10x slower.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def lite0():
    return load_teacher()


def _photo(name: str, size: int) -> torch.Tensor:
    image = torch.from_numpy(load_photo(name)).permute(2, 0, 1)
    return TF.resize(image, [size, size], antialias=True).float()[None] / 255


@pytest.mark.parametrize(("photo", "label"), [("chelsea", 285), ("coffee", 967)])
def test_lite0_dense_map_mean_is_the_models_logits(lite0, photo, label):
    x = _photo(photo, 224)
    with torch.inference_mode():
        dense = lite0(x)
        logits = lite0.model(lite0.normalize(x))
    assert dense.shape == (1, 1000, 7, 7)
    # avgpool + fc == mean over positions of fc: the FCN conversion is exact for this head.
    torch.testing.assert_close(dense.mean(dim=(2, 3)), logits, atol=2e-4, rtol=1e-4)
    assert int(logits.argmax()) == label
    assert lite0.name == DEFAULT_TEACHER and lite0.stride == 32
    assert lite0.grid(480) == (15, 15)


def test_teachers_know_the_input_size_of_their_weights(lite0, tmp_path):
    # EfficientNet-Lite0 was trained at 224 (tensorflow/tpu efficientnet/lite: 224 x 224).
    assert lite0.resolution == 224 and lite0.grid(lite0.resolution) == (7, 7)
    # torchvision: the crop size of the weights' evaluation preset (240 for B1, not 224).
    torch.manual_seed(0)
    path = tmp_path / "b1.pth"
    torch.save(torchvision.models.efficientnet_b1().state_dict(), path)
    b1 = load_teacher("efficientnet_b1", checkpoint=path)
    preset = torchvision.models.get_model_weights("efficientnet_b1").DEFAULT.transforms()
    assert b1.resolution == preset.crop_size[0] == 240
    # A module that records nothing: ImageNet's usual 224; or what the caller says.
    plain = torchvision.models.resnet18(num_classes=10).eval()
    assert dense_teacher(plain, weights_sha256="0" * 64).resolution == 224
    assert dense_teacher(plain, weights_sha256="0" * 64, resolution=288).resolution == 288


def test_timm_teachers_take_the_pretrained_cfg_input_size(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", pretrained=False).eval()
    want = model.pretrained_cfg["input_size"][-1]
    assert want != 224  # 176: a test that a fixed 224 would fail
    assert dense_teacher(model, weights_sha256="0" * 64).resolution == want
    torch.save(model.state_dict(), tmp_path / "r10t.pth")
    assert load_teacher("timm:resnet10t", checkpoint=tmp_path / "r10t.pth").resolution == want


def test_lite0_normalization_is_inception_style(lite0):
    # EfficientNet-Lite was trained on (x - 127) / 128; ImageNet mean/std would be wrong.
    assert lite0.mean == pytest.approx((127 / 255,) * 3)
    assert lite0.std == pytest.approx((128 / 255,) * 3)


def test_fcn_head_equals_float64_conv1x1_reference():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=37).eval()
    teacher = dense_teacher(model)
    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        feats = teacher.features(teacher.normalize(x))
        got = teacher.head(feats)
        w = model.fc.weight.double()[:, :, None, None]
        want = F.conv2d(feats.double(), w, model.fc.bias.double())
    assert got.shape == (2, 37, 3, 4)  # H rows, W columns: not transposed
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "arch",
    ["resnet18", "regnet_y_400mf", "efficientnet_b0", "mobilenet_v2", "mnasnet0_5", "densenet121"],
)
def test_affine_heads_average_to_the_models_logits(arch):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    teacher = dense_teacher(model, name=arch)
    x = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(
            teacher(x).mean(dim=(2, 3)), model(teacher.normalize(x)), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("arch", ["convnext_tiny", "mobilenet_v3_small"])
def test_nonlinear_heads_apply_per_position(arch):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    teacher = dense_teacher(model)  # checks features -> pool -> classifier == model
    x = torch.rand(1, 3, 64, 96)
    with torch.inference_mode():
        dense = teacher(x)
        feats = teacher.features(teacher.normalize(x))
        # Cell (1, 2) is the classifier applied to that position's features alone.
        cell = feats[:, :, 1:2, 2:3]
        alone = model.classifier(cell if arch == "convnext_tiny" else cell.flatten(1))
    assert dense.shape == (1, 10, 2, 3)
    torch.testing.assert_close(dense[:, :, 1, 2], alone.flatten(1), atol=1e-5, rtol=1e-5)


class _Odd(nn.Module):
    """A classifier whose parts have names the finder does not know."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU())
        self.logits = nn.Linear(8, 5)

    def forward(self, x):
        return self.logits(self.trunk(x).mean(dim=(2, 3)))


def test_module_teacher_needs_features_and_classifier_when_not_found():
    model = _Odd().eval()
    with pytest.raises(ValueError, match=r"cannot find where the features of _Odd end.*features="):
        dense_teacher(model)
    teacher = dense_teacher(model, features=model.trunk, classifier=model.logits)
    assert teacher.num_classes == 5 and teacher.stride == 4
    with pytest.raises(ValueError, match="does not reproduce the model's logits"):
        dense_teacher(model, features=model.trunk, classifier=nn.Linear(8, 5))


def test_transformer_is_refused_with_a_reason():
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=1, hidden_dim=8, mlp_dim=8
    )
    with pytest.raises(ValueError, match="vision transformer produces tokens"):
        dense_teacher(vit)


def test_unknown_teacher_lists_close_names():
    with pytest.raises(ValueError, match=r"unknown teacher 'resnet5'.*resnet50"):
        load_teacher("resnet5")
    with pytest.raises(ValueError, match=r"no weights 'IMAGENET9K' for resnet18.*IMAGENET1K_V1"):
        load_teacher("resnet18.IMAGENET9K")


def _hub(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


def test_torchvision_weights_come_from_the_local_cache_only(monkeypatch, tmp_path):
    cache = _hub(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no local weights.*resnet18-f37072fd\.pth"):
        load_teacher("resnet18")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), cache / "resnet18-f37072fd.pth")
    teacher = load_teacher("resnet18")
    assert teacher.name == "torchvision:resnet18"
    assert teacher.weights_sha256 == file_sha256(cache / "resnet18-f37072fd.pth")


def test_checkpoint_of_other_shapes_names_the_parameter(tmp_path):
    path = tmp_path / "ten_classes.pth"
    torch.save({"state_dict": torchvision.models.resnet18(num_classes=10).state_dict()}, path)
    with pytest.raises(
        ValueError, match=r"'fc\.weight' has shape \[10, 512\] in the checkpoint but \[1000, 512\]"
    ):
        load_teacher("resnet18", checkpoint=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_teacher("resnet18", checkpoint=tmp_path / "junk.pth")


def test_timm_teacher_from_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False)
    torch.save(model.state_dict(), tmp_path / "r10t.pth")
    teacher = load_teacher("timm:resnet10t", checkpoint=tmp_path / "r10t.pth")
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(
            teacher(x).mean(dim=(2, 3)), teacher.model(teacher.normalize(x)), atol=1e-4, rtol=1e-4
        )
    with pytest.raises(ValueError, match="unknown teacher 'timm:resnet5t'"):
        load_teacher("timm:resnet5t")


def test_normalization_lives_on_the_models_device():
    # A module already on a GPU must be checked there: images made on the CPU would meet
    # CUDA weights in check(). The meta device stands in for CUDA on a CPU-only machine.
    model = torchvision.models.resnet18(num_classes=10).to("meta").eval()
    teacher = dense_teacher(model, weights_sha256="0" * 64, check=False)
    assert {buffer.device.type for buffer in teacher.buffers()} == {"meta"}
