"""Every model of the toolkit, by name: a plain dict name -> constructor.

Recipes, `toolkit predict`/`evaluate`/`report`/`denoise`, the comparison and the latent study build
models through `build_model({"name": ..., "kwargs": {...}})`, the spec stored in every checkpoint, so
a model added here works everywhere without another edit. Constructors never touch the network;
pretrained weights load in toolkit.models.weights. Every entry must build with its defaults (the
model test loops over this table).
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from torch import nn

from toolkit.errors import CheckpointError, ConfigError
from toolkit.models.autoencoders import AUTOENCODER_FAMILY, ConvAutoencoder, family_autoencoder
from toolkit.models.cnn import SceneCNN
from toolkit.models.denoisers import DnCNN, ResUNet, UNetDenoiser
from toolkit.models.efficientnet_lite import efficientnet_lite0, efficientnet_lite2
from toolkit.models.fast_resnet import FastResNet
from toolkit.models.resnet import resnet18_classifier

CLASSIFIERS = {
    "SceneCNN": SceneCNN,  # the study's 12-conv CNN
    "resnet18_classifier": resnet18_classifier,  # torchvision ResNet18, new head
    "FastResNet": FastResNet,  # fast_cnn's residual network
    "efficientnet_lite0": efficientnet_lite0,  # EfficientNet-Lite0 (ImageNet weights offline)
    "efficientnet_lite2": efficientnet_lite2,  # EfficientNet-Lite2 (ImageNet weights offline)
}
DENOISERS = {
    **{name: partial(family_autoencoder, name) for name in AUTOENCODER_FAMILY},  # AE5 ... AE146 (the study's three)
    "unet": UNetDenoiser,  # a small U-Net, residual output
    "dncnn": DnCNN,  # Zhang et al.'s DnCNN
    "resunet": ResUNet,  # residual-block U-Net with a noise-level map (DRUNet-style): the blind denoiser
}
MODELS = {**CLASSIFIERS, **DENOISERS}

_RENAMED = {"UNetDenoiser": "unet", "DnCNN": "dncnn"}  # names in checkpoints written before the table


def is_denoiser(name: str) -> bool:
    return _RENAMED.get(name, name) in DENOISERS or name == "ConvAutoencoder"


def build_model(spec: dict) -> nn.Module:
    """The model a spec describes: MODELS[spec['name']](**spec['kwargs']).

    An unknown name is a CheckpointError (a checkpoint from another toolkit version); a constructor
    that refuses its arguments (e.g. an image size too small for the network) is a ConfigError.
    """
    name, kwargs = spec.get("name"), dict(spec.get("kwargs", {}))
    if name == "ConvAutoencoder":  # checkpoints written before the table held the layer lists themselves
        constructor = ConvAutoencoder
    else:
        constructor = MODELS.get(_RENAMED.get(name, name))
    if constructor is None:
        raise CheckpointError(f"the model {name!r} is not one of this toolkit's models ({', '.join(MODELS)})")
    try:
        return constructor(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"cannot build {name} with {kwargs}: {error}{settings_of(constructor)}") from None


def check_model_spec(spec: dict) -> None:
    """Raise what build_model would (ConfigError, CheckpointError), at once: the model is built on torch's meta
    device (no memory, no weights, torch's random generators untouched), so that a recipe refuses a bad
    --model_kwargs before it writes a run directory or prepares any data."""
    with torch.device("meta"):
        build_model(spec)


def settings_of(constructor) -> str:
    """'; it takes: a=1, b=(8, 16)': what a model constructor accepts, with its defaults ('' when it has none)."""
    target = constructor.func if isinstance(constructor, partial) else constructor
    parameters = [parameter for parameter in inspect.signature(target).parameters.values()
                  if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    if isinstance(constructor, partial):  # the family's name is bound already
        parameters = parameters[len(constructor.args):]
    said = [parameter.name if parameter.default is parameter.empty else f"{parameter.name}={parameter.default!r}"
            for parameter in parameters]
    return f"; it takes: {', '.join(said)}" if said else ""
