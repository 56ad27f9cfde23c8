"""torchvision's ResNet18 with a new classification head."""

from __future__ import annotations

from torch import nn


def resnet18_classifier(num_classes: int = 6) -> nn.Module:
    """ResNet18 (random init) with its 1000-way layer replaced by Linear(512, num_classes).

    Load pretrained weights with toolkit.models.weights.load_resnet18_weights.
    """
    import torchvision  # here, not at the top: its import (2 s: it imports torch._dynamo) would slow every command

    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def freeze_backbone(model: nn.Module, head_prefix: str = "fc.") -> int:
    """Stop gradients everywhere except the head (what the study meant to do). Returns #frozen tensors.

    BatchNorm statistics still update in training mode; call .eval() on the backbone to freeze them too.
    """
    frozen = 0
    for name, parameter in model.named_parameters():
        if not name.startswith(head_prefix):
            parameter.requires_grad_(False)
            frozen += 1
    return frozen
