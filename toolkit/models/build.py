"""Rebuilding a model from the spec stored in its checkpoint (predict, evaluate, compare).

A spec is {"name": <class or function name>, "kwargs": {...}}: the constructor call that made
the model, written by the recipe. No weights are loaded here and nothing touches the network.
"""

from __future__ import annotations

from torch import nn

from toolkit.errors import CheckpointError


def build_model(spec: dict) -> nn.Module:
    name, kwargs = spec.get("name"), dict(spec.get("kwargs", {}))
    if name == "SceneCNN":
        from toolkit.models.cnn import SceneCNN

        return SceneCNN(**kwargs)
    if name == "resnet18_classifier":
        from toolkit.models.resnet import resnet18_classifier

        return resnet18_classifier(**kwargs)
    if name == "FastResNet":
        from toolkit.models.fast_resnet import FastResNet

        return FastResNet(**kwargs)
    if name == "efficientnet_lite0":
        from toolkit.models.efficientnet_lite import efficientnet_lite0

        return efficientnet_lite0(**kwargs)
    if name == "ConvAutoencoder":
        from toolkit.models.autoencoders import ConvAutoencoder

        return ConvAutoencoder(**kwargs)
    if name == "DnCNN":
        from toolkit.models.denoisers import DnCNN

        return DnCNN(**kwargs)
    if name == "UNetDenoiser":
        from toolkit.models.denoisers import UNetDenoiser

        return UNetDenoiser(**kwargs)
    raise CheckpointError(f"the checkpoint names a model this toolkit does not know: {name!r}")
