"""Pretrained weights: downloaded and cached where there is a network, or read from a file.

Kept apart from the model constructors so that building a model never touches the network.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from torch import nn

from toolkit.errors import ConfigError, UserError

DOWNLOAD_TIMEOUT_S = 30  # a blocked network fails in seconds instead of hanging the run


def check_weights_option(value: str, names: tuple[str, ...]) -> None:
    """--weights is one of `names` or a file that is there: a ConfigError now, not when the model is built."""
    if value not in names and not Path(value).is_file():
        raise ConfigError(f"--weights={value!r}: neither {', '.join(names)} nor a weights file that is there")


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt/.bin/.safetensors file, unwrapping common containers."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0][:200]  # its first sentence
        raise UserError(f"{path} is not a readable PyTorch weights file ({type(error).__name__}: {first}); pass a "
                        ".pth/.pt state dict or a .safetensors file") from None
    for container in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(container), dict):
            state = state[container]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {key.removeprefix("module.").removeprefix("_orig_mod."): value for key, value in state.items()}


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], source: str, skip_prefixes=()) -> list[str]:
    """Copy every tensor whose name and shape match; skip heads sized for other classes.

    Raises UserError when the file is clearly for another architecture (backbone keys missing).
    Returns the names left at their fresh initialisation.
    """
    own = model.state_dict()
    usable = {k: v for k, v in state.items()
              if k in own and own[k].shape == v.shape and not k.startswith(tuple(skip_prefixes))}
    missing = [k for k in own if k not in usable]
    backbone_missing = [k for k in missing if not k.startswith(tuple(skip_prefixes))]
    if backbone_missing:
        example = ", ".join(backbone_missing[:3])
        raise UserError(f"{source} does not fit this model: {len(backbone_missing)} tensors are missing or "
                        f"have other shapes (e.g. {example}); is it a state dict for the same architecture?")
    model.load_state_dict(usable, strict=False)
    return missing


def _download_torchvision(weights_enum) -> dict[str, torch.Tensor]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    finally:
        socket.setdefaulttimeout(previous)


def load_resnet18_weights(model: nn.Module, weights: str) -> str:
    """weights: 'none' (keep random init), 'imagenet' (torchvision's, downloaded once to the torch
    hub cache), 'auto' (imagenet if it can be had, else random init, loudly), or a path to a state
    dict. The classification head stays fresh unless the file's head has the same shape. Returns a
    one-line description of what was loaded.
    """
    if weights in ("", "none"):
        return "random initialisation"
    if weights == "auto":  # for demos that must run anywhere: the fallback is loud and recorded
        try:
            return load_resnet18_weights(model, "imagenet")
        except UserError as error:
            print(f"[model] WARNING: ImageNet weights unavailable, ResNet18 starts from RANDOM weights: {error}")
            return "random initialisation (ImageNet weights unavailable)"
    if weights == "imagenet":
        import torchvision

        try:
            state = _download_torchvision(torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
        except Exception as error:  # URLError, timeouts, hash mismatch, ...
            raise UserError(
                f"could not download torchvision's ImageNet ResNet18 weights ({type(error).__name__}: {error}). "
                "Without a network, pass a local state dict instead: --weights=PATH/resnet18.pth "
                "(e.g. resnet18-f37072fd.pth copied from a machine with internet), or --weights=none"
            ) from None
        load_matching(model, state, "torchvision ImageNet weights", skip_prefixes=("fc.",))
        return "ImageNet (torchvision IMAGENET1K_V1), new head"
    state = read_state_dict(weights)
    head_fits = all(k in state and state[k].shape == v.shape for k, v in model.state_dict().items()
                    if k.startswith("fc."))
    load_matching(model, state, weights, skip_prefixes=() if head_fits else ("fc.",))
    return f"{weights}" + ("" if head_fits else ", new head")


def load_trained_weights(model: nn.Module, run_or_checkpoint: Path | str) -> str:
    """Start `model` from a trained toolkit checkpoint of the same model (e.g. to fine-tune a denoiser)."""
    from safetensors.torch import load_file

    from toolkit.inference import resolve_checkpoint
    from toolkit.train.state import TrainerState

    checkpoint = resolve_checkpoint(run_or_checkpoint)
    state = TrainerState.read(checkpoint)
    weights = {k.removeprefix("module.").removeprefix("_orig_mod."): v
               for k, v in load_file(checkpoint / "model.safetensors").items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise UserError(f"{checkpoint} holds a {state.model} ({state.model_spec.get('kwargs')}) that does not fit "
                        f"this model: {str(error).splitlines()[0]}") from None
    return f"fine-tuned from {checkpoint} ({state.recipe}, {state.label or state.model})"
