"""Every model: output shape, a gradient on every parameter, no NaNs; weights loading."""

from __future__ import annotations

import socket

import pytest
import torch

from toolkit.errors import UserError
from toolkit.models import build_model
from toolkit.models.cnn import SceneCNN
from toolkit.models.resnet import freeze_backbone, resnet18_classifier
from toolkit.models.summary import count_parameters, forward_flops
from toolkit.models.weights import load_resnet18_weights

CLASSIFIERS = {
    "SceneCNN": lambda: SceneCNN(num_classes=6, width=20, image_size=80),
    "SceneCNN-small": lambda: SceneCNN(num_classes=3, width=4, image_size=32),
    "ResNet18": lambda: resnet18_classifier(num_classes=6),
}


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_shape_gradients_and_finiteness(name):
    torch.manual_seed(0)
    model = CLASSIFIERS[name]()
    size = 32 if "small" in name else 80
    classes = 3 if "small" in name else 6
    images = torch.randn(4, 3, size, size)
    logits = model(images)
    assert logits.shape == (4, classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).mean().backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{parameter_name} has a non-finite gradient"


def test_study_cnn_matches_the_spec():
    model = SceneCNN()
    assert count_parameters(model) == 2_972_826
    assert abs(forward_flops(model, (3, 80, 80)) / 1e9 - 0.96) < 0.01
    assert abs(forward_flops(resnet18_classifier(), (3, 80, 80)) / 1e9 - 0.51) < 0.01
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20 * k for k in range(1, 13)]
    assert model.head[1].in_features == 6000  # 12n x 5 x 5
    with pytest.raises(ValueError, match="too small"):
        SceneCNN(image_size=8)


def test_build_model_rebuilds_from_a_spec():
    model = build_model({"name": "SceneCNN", "kwargs": {"num_classes": 4, "width": 2, "image_size": 32}})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = resnet18_classifier()
    freeze_backbone(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]


def _imagenet_shaped_resnet18_state():
    torch.manual_seed(1)
    donor = resnet18_classifier(num_classes=1000)
    return donor.state_dict()


def test_weights_from_a_local_file_fill_the_backbone_and_keep_a_new_head(tmp_path):
    state = _imagenet_shaped_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = resnet18_classifier(num_classes=6)
    head_before = model.fc.weight.clone()
    assert "new head" in load_resnet18_weights(model, str(path))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert torch.equal(model.fc.weight, head_before)


def test_torchvision_imagenet_weights_come_from_the_hub_cache_without_network(tmp_path, monkeypatch):
    checkpoints = tmp_path / "torch-home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = _imagenet_shaped_resnet18_state()
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")  # what a first online run leaves in the cache
    monkeypatch.setattr(socket, "create_connection", _no_network)
    model = resnet18_classifier()
    assert "ImageNet" in load_resnet18_weights(model, "imagenet")
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def _no_network(*args, **kwargs):
    raise OSError("network is unreachable (test)")


def test_imagenet_weights_without_network_name_the_local_alternative(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    with pytest.raises(UserError, match=r"--weights=PATH"):
        load_resnet18_weights(resnet18_classifier(), "imagenet")


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "cnn.pth"
    torch.save(SceneCNN().state_dict(), path)
    with pytest.raises(UserError, match="does not fit this model"):
        load_resnet18_weights(resnet18_classifier(), str(path))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch weights file") as refused:
        load_resnet18_weights(resnet18_classifier(), str(tmp_path / "junk.pth"))
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 400  # one line, not torch's essay
    assert str(refused.value).endswith("pass a .pth/.pt state dict or a .safetensors file")
    with pytest.raises(UserError, match="does not exist"):
        load_resnet18_weights(resnet18_classifier(), str(tmp_path / "absent.pth"))
    assert "unavailable" in load_resnet18_weights(resnet18_classifier(), "auto")


@pytest.mark.parametrize("name", sorted(__import__("toolkit.models", fromlist=["MODELS"]).MODELS))
def test_every_model_in_the_table_builds_trains_and_stays_finite(name):
    """As timm's tests do: every entry of toolkit.models.MODELS, with its own defaults: output shape, a gradient
    on every trainable parameter, no NaN. A model added to the table is checked here with no other edit."""
    from toolkit.models import DENOISERS, build_model

    torch.manual_seed(0)
    model = build_model({"name": name, "kwargs": {}})
    size = getattr(model, "image_size", 64)  # the study CNN's head is sized for its input; the others take any
    images = torch.rand(2, 3, size, size)
    extra = (torch.tensor([0.05, 0.2]),) if getattr(model, "conditioned", False) else ()
    output = model(images, *extra)
    if name in DENOISERS:
        assert output.shape == images.shape
        loss = (output - images).square().mean()
    else:
        assert output.ndim == 2 and output.shape[0] == 2
        loss = output.logsumexp(dim=1).mean()
    assert torch.isfinite(output).all()
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, f"{name}: {parameter_name} got no gradient"
            assert torch.isfinite(parameter.grad).all(), f"{name}: {parameter_name} has a non-finite gradient"


def test_a_model_the_table_does_not_know_is_a_clear_error():
    from toolkit.errors import CheckpointError, ConfigError
    from toolkit.models import build_model

    with pytest.raises(CheckpointError, match="not one of this toolkit's models"):
        build_model({"name": "VGG16", "kwargs": {}})
    with pytest.raises(ConfigError, match="cannot build unet") as refused:
        build_model({"name": "unet", "kwargs": {"colour": True}})
    assert str(refused.value).endswith("; it takes: width=32, levels=3, conditioned=False")  # what it does take

